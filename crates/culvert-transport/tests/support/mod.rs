//! Helpers shared by the transport's integration tests.

use std::time::Duration;

use culvert_proto::{Config, Connection, Side};
use culvert_transport::wsframe::{Role, WsConn};
use culvert_transport::{Mux, MuxEvent, TunnelStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

#[allow(dead_code)] // not every test file that includes this module uses it
pub mod counted;

/// A connection of `side` with the default config, started now.
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn connection(side: Side) -> Connection {
    Connection::new(side, Config::default(), std::time::Instant::now()).unwrap()
}

/// How long a test waits for anything at most.
pub const LIMIT: Duration = Duration::from_secs(60);

/// The next stream the peer opened.
#[allow(dead_code)] // not every test file that includes this module uses it
pub async fn incoming(events: &mut UnboundedReceiver<MuxEvent>) -> TunnelStream {
    loop {
        match tokio::time::timeout(LIMIT, events.recv()).await {
            Ok(Some(MuxEvent::Incoming(s, _))) => return s,
            Ok(Some(_)) => continue,
            other => panic!("no incoming stream: {other:?}"),
        }
    }
}

/// Writes `answer` on `s`, shuts it down and drops it at once, as a one-shot responder (an
/// HTTP/1.0 server) does; panics past [`LIMIT`].
#[allow(dead_code)] // not every test file that includes this module uses it
pub async fn answer_and_drop(mut s: TunnelStream, answer: Vec<u8>) {
    tokio::time::timeout(LIMIT, async move {
        s.write_all(&answer).await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
    })
    .await
    .expect("answered within the limit");
}

/// A client and a server connection and their events: (client, server, the client's
/// events, the server's events).
pub type Pair = (
    Mux,
    Mux,
    UnboundedReceiver<MuxEvent>,
    UnboundedReceiver<MuxEvent>,
);

/// A client and a server connection joined by a loopback TCP socket, with default configs:
/// (client, server, the client's events, the server's events).
#[allow(dead_code)] // not every test file that includes this module uses it
pub async fn connected_pair() -> Pair {
    connected_pair_with(Config::default()).await
}

/// [`connected_pair`] with `config` on both ends.
#[allow(dead_code)] // not every test file that includes this module uses it
pub async fn connected_pair_with(config: Config) -> Pair {
    let (dialed, accepted) = socket_pair().await;
    spawn_pair(dialed, accepted, config)
}

/// [`connected_pair`] whose server end counts what its driver does with the socket (the
/// server role writes unmasked frames, the ones a sender may write through itself):
/// (client, server, the client's events, the server's events, the server socket's reads
/// and writes).
#[allow(dead_code)] // not every test file that includes this module uses it
pub async fn counted_pair() -> (
    Mux,
    Mux,
    UnboundedReceiver<MuxEvent>,
    UnboundedReceiver<MuxEvent>,
    counted::Counts,
) {
    let (dialed, accepted) = socket_pair().await;
    let server_end = counted::Counted::new(accepted);
    let counts = server_end.counts();
    let (client, server, client_events, server_events) =
        spawn_pair(dialed, server_end, Config::default());
    (client, server, client_events, server_events, counts)
}

/// A client connection on `client_end` and a server connection on `server_end`, both
/// with `config`.
fn spawn_pair<C, S>(client_end: C, server_end: S, config: Config) -> Pair
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let now = std::time::Instant::now();
    let (client, client_events) = Mux::spawn_with(
        WsConn::new(client_end, Role::Client),
        Connection::new(Side::Client, config.clone(), now).unwrap(),
    );
    let (server, server_events) = Mux::spawn_with(
        WsConn::new(server_end, Role::Server),
        Connection::new(Side::Server, config, now).unwrap(),
    );
    (client, server, client_events, server_events)
}

/// Two ends of one loopback TCP connection: (dialed, accepted).
#[allow(dead_code)] // not every test file that includes this module uses it
pub async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (dialed.unwrap(), accepted.unwrap().0)
}

/// Queues `data` on `stream` from this task without awaiting (so nothing else runs
/// meanwhile); the send must complete at once.
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn send_now(stream: &TunnelStream, data: bytes::Bytes) {
    let mut send = std::pin::pin!(stream.send(data));
    let polled = std::future::Future::poll(
        send.as_mut(),
        &mut std::task::Context::from_waker(std::task::Waker::noop()),
    );
    assert!(
        matches!(polled, std::task::Poll::Ready(Ok(()))),
        "{polled:?}"
    );
}
