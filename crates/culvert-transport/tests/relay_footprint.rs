//! What one idle tunneled connection costs: the relay's future lives in its task for as
//! long as the connection is open, so its size is paid once per connection (a server or
//! agent holding thousands of idle connections pays it thousands of times).

use culvert_proto::{Config, Connection, Side};
use culvert_transport::wsframe::{Role, WsConn};
use culvert_transport::{relay_tcp_counted, relay_tcp_until, Mux};

mod support;

use support::socket_pair;

/// The relay's own state: two socket halves, the read buffer handle, the chunks to write and
/// the two directions' loops: 568 bytes in a debug build. It was 2,888 when the two
/// directions were moved into an `async` block inside `select!` (stored twice) and the
/// vectored write kept its 64-slice array across the await (1 KiB), which showed up as
/// about 1.8 KB more RSS per idle connection on each side (BENCHMARKS.md).
const RELAY_FUTURE_MAX: usize = 1024;

#[tokio::test]
async fn an_idle_relay_holds_little_state() {
    let (a, b) = socket_pair().await;
    let now = std::time::Instant::now();
    let conn = Connection::new(Side::Client, Config::default(), now).unwrap();
    let (mux, _events) = Mux::spawn_with(WsConn::new(a, Role::Client), conn);
    let (c, _d) = socket_pair().await;
    // Opening needs no answer from the peer: nothing has to run for the futures' sizes.
    let stream = mux.open("footprint").await.unwrap();
    let until = relay_tcp_until(c, &stream, None, std::future::pending());
    let size = std::mem::size_of_val(&until);
    eprintln!("relay_tcp_until future: {size} bytes");
    assert!(
        size <= RELAY_FUTURE_MAX,
        "the relay future is {size} bytes (at most {RELAY_FUTURE_MAX} expected)"
    );
    drop(until);
    let (e, _f) = socket_pair().await;
    let counted = relay_tcp_counted(e, &stream, None);
    let size = std::mem::size_of_val(&counted);
    eprintln!("relay_tcp_counted future: {size} bytes");
    assert!(size <= RELAY_FUTURE_MAX, "the relay future is {size} bytes");
    drop(b);
}
