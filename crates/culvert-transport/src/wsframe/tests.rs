//! Tests of the WebSocket framer: masking, frame parsing and writing, batching, close.

use super::*;
use crate::ws::BATCH_CAP;
use proptest::strategy::Strategy as _;
use std::io::{self, IoSlice};
use tokio::io::AsyncWriteExt;

#[test]
fn mask_matches_bytewise_at_any_offset() {
    let key = [1, 2, 3, 4];
    for off in 0..4 {
        for len in 0..40 {
            let mut a: Vec<u8> = (0..len as u8).collect();
            let mut b = a.clone();
            apply_mask(&mut a, key, off);
            for (i, x) in b.iter_mut().enumerate() {
                *x ^= key[(off + i) % 4];
            }
            assert_eq!(a, b);
        }
    }
}

#[test]
fn copy_masked_matches_copy_then_mask() {
    let key = [9, 8, 7, 6];
    for off in 0..5 {
        for len in 0..40 {
            let src: Vec<u8> = (0..len as u8).map(|x| x.wrapping_mul(31)).collect();
            let mut a = vec![0u8; len];
            copy_masked(&mut a, &src, key, off);
            let mut b = src.clone();
            apply_mask(&mut b, key, off);
            assert_eq!(a, b);
        }
    }
}

/// A vectored sink that takes at most `step` bytes per write, so every boundary
/// (inside a header, between messages, inside a segment) is hit by some short write.
struct ShortVectored {
    out: Vec<u8>,
    step: usize,
    /// Writes made so far (vectored or not).
    writes: usize,
    /// Of them, plain (one-buffer) writes.
    plain: usize,
}

/// A writer over [`ShortVectored`] taking `step` bytes per write.
fn short_writer(step: usize, role: Role) -> WsWriter<ShortVectored> {
    WsWriter::new(
        ShortVectored {
            out: Vec::new(),
            step,
            writes: 0,
            plain: 0,
        },
        role,
    )
}

impl AsyncWrite for ShortVectored {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.writes += 1;
        self.plain += 1;
        let n = buf.len().min(self.step);
        self.out.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        self.writes += 1;
        let mut left = self.step;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(left);
            self.out.extend_from_slice(&b[..take]);
            n += take;
            left -= take;
            if left == 0 {
                break;
            }
        }
        std::task::Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The payload of the data frames in `data` (read in 4,093-byte pieces) as `role`,
/// until `want` bytes came.
async fn read_back(data: Vec<u8>, role: Role, unmasked: bool, want: usize) -> Vec<u8> {
    let mut r = WsReader::new(
        Chunked {
            data,
            pos: 0,
            sizes: vec![4093],
            next: 0,
        },
        role,
    );
    r.accept_unmasked(unmasked);
    let mut got = Vec::new();
    while got.len() < want {
        match r.next().await.unwrap() {
            WsIn::Data(d) => got.extend_from_slice(&d),
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[tokio::test]
async fn several_messages_in_one_vectored_write_survive_any_short_write() {
    let a: Vec<Bytes> = vec![Bytes::from(vec![1u8; 300]), Bytes::from(vec![2u8; 70_000])];
    let b: Vec<Bytes> = vec![Bytes::from(vec![3u8; 5])];
    let c: Vec<Bytes> = (0..300).map(|i| Bytes::from(vec![i as u8; 7])).collect();
    let mut expect = Vec::new();
    for seg in a.iter().chain(&b).chain(&c) {
        expect.extend_from_slice(seg);
    }
    for step in [1, 3, 13, 4096, 1 << 20] {
        for (w_role, r_role, unmasked) in [
            (Role::Server, Role::Client, false),
            (Role::Client, Role::Server, true),
            (Role::Client, Role::Server, false),
        ] {
            let mut w = short_writer(step, w_role);
            w.send_unmasked(unmasked);
            w.send_many(&[(&a, 70_300), (&b, 5), (&c, 2_100)])
                .await
                .unwrap();
            let data = std::mem::take(&mut w.io.get_mut().out);
            let len = data.len();
            let got = read_back(data, r_role, unmasked, expect.len()).await;
            assert_eq!(got, expect, "step {step}, {w_role:?}, {len} bytes");
        }
    }
}

/// Write-through (`driver/direct.rs`) hands several batches to one non-blocking call:
/// they must go in one system call, and whatever a short write leaves (a header's
/// tail, a segment's tail, frames past the call's limits) must follow in order.
#[tokio::test]
async fn frames_written_through_go_in_one_write_and_a_short_one_loses_nothing() {
    let a: Vec<Bytes> = vec![Bytes::from(vec![1u8; 300]), Bytes::from(vec![2u8; 70_000])];
    let b: Vec<Bytes> = vec![Bytes::from(vec![3u8; 5])];
    // More slices than one vectored write takes.
    let c: Vec<Bytes> = (0..300).map(|i| Bytes::from(vec![i as u8; 7])).collect();
    let d: Vec<Bytes> = vec![Bytes::from(vec![4u8; 200])];
    // A fifth frame: more than one call attempts.
    let e: Vec<Bytes> = vec![Bytes::from(vec![5u8; 9])];
    let msgs: [(&[Bytes], usize); 5] = [(&a, 70_300), (&b, 5), (&c, 2_100), (&d, 200), (&e, 9)];
    let mut expect = Vec::new();
    for seg in [&a, &b, &c, &d, &e].into_iter().flatten() {
        expect.extend_from_slice(seg);
    }
    for step in [1, 2, 13, 4096, 70_310, 1 << 20] {
        let mut w = short_writer(step, Role::Server);
        assert!(w.can_send_now());
        let all = w.try_send_many_now(&msgs);
        assert_eq!(
            w.io.get_mut().writes,
            1,
            "step {step}: one write for every frame"
        );
        assert!(
            !all,
            "step {step}: the fifth frame waits for the writer task"
        );
        assert!(w.has_pending());
        w.finish_pending().await.unwrap();
        assert!(!w.has_pending());
        let data = std::mem::take(&mut w.io.get_mut().out);
        let got = read_back(data, Role::Client, false, expect.len()).await;
        assert_eq!(got, expect, "step {step}");
    }
    // Everything fits: one write, nothing left.
    let mut w = short_writer(1 << 20, Role::Server);
    assert!(w.try_send_many_now(&msgs[..2]));
    assert_eq!(w.io.get_mut().writes, 1);
    assert!(!w.has_pending());
}

/// A small message written through goes out as one plain write of its frames copied
/// together (`send`, not `writev`), and a short one loses nothing either.
#[tokio::test]
async fn small_frames_written_through_go_in_one_plain_write_and_a_short_one_loses_nothing() {
    let a: Vec<Bytes> = vec![Bytes::from(vec![1u8; 64])];
    let b: Vec<Bytes> = vec![Bytes::from(vec![2u8; 10]), Bytes::from(vec![3u8; 200])];
    let msgs: [(&[Bytes], usize); 2] = [(&a, 64), (&b, 210)];
    let mut expect = Vec::new();
    for seg in [&a, &b].into_iter().flatten() {
        expect.extend_from_slice(seg);
    }
    for step in [1, 2, 13, 100, 1 << 20] {
        let mut w = short_writer(step, Role::Server);
        let all = w.try_send_many_now(&msgs);
        let io = w.io.get_mut();
        assert_eq!(
            (io.writes, io.plain),
            (1, 1),
            "step {step}: one plain write"
        );
        assert_eq!(all, step == 1 << 20, "step {step}");
        assert_eq!(w.has_pending(), !all);
        w.finish_pending().await.unwrap();
        let data = std::mem::take(&mut w.io.get_mut().out);
        let got = read_back(data, Role::Client, false, expect.len()).await;
        assert_eq!(got, expect, "step {step}");
    }
}

#[tokio::test]
async fn round_trip_both_roles_and_split_reads() {
    for (w_role, r_role) in [(Role::Client, Role::Server), (Role::Server, Role::Client)] {
        let (a, b) = tokio::io::duplex(64);
        let mut w = WsWriter::new(a, w_role);
        let mut r = WsReader::new(b, r_role);
        // An odd first segment: the mask of the next one starts mid-key.
        let segs = vec![Bytes::from(vec![7u8; 70_001]), Bytes::from_static(b"tail")];
        let t = tokio::spawn(async move {
            w.send(&segs, 70_005).await.unwrap();
            w.send_control(0x9, b"hi").await.unwrap();
            w.close().await.unwrap();
        });
        let mut got = Vec::new();
        loop {
            match r.next().await.unwrap() {
                WsIn::Data(d) => got.extend_from_slice(&d),
                WsIn::Ping(p) => assert_eq!(&p[..], b"hi"),
                WsIn::Close => break,
            }
        }
        t.await.unwrap();
        assert_eq!(got.len(), 70_005);
        assert!(got[..70_001].iter().all(|x| *x == 7));
        assert_eq!(&got[70_001..], b"tail");
    }
}

/// Hands out its bytes in the given chunk sizes (cycled), as a socket might.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let want = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = want.min(out.remaining()).min(self.data.len() - self.pos);
        let pos = self.pos;
        out.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Adjacent data pieces joined into one.
fn joined(items: Vec<WsIn>) -> Vec<WsIn> {
    let mut out: Vec<WsIn> = Vec::new();
    for item in items {
        match (out.last_mut(), item) {
            (Some(WsIn::Data(prev)), WsIn::Data(d)) => {
                let mut v = prev.to_vec();
                v.extend_from_slice(&d);
                *prev = Bytes::from(v);
            }
            (_, item) => out.push(item),
        }
    }
    out
}

proptest::proptest! {
    /// Whatever the frame sizes and however reads split them, the reader yields the data
    /// frames' bytes in order, unmasked, and every ping once, where it was sent.
    #[test]
    fn any_frames_any_splits_round_trip(
        frames in proptest::collection::vec(
            (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), 0u8..8),
            1..12,
        ),
        sizes in proptest::collection::vec(1usize..5000, 1..8),
        client in proptest::prelude::any::<bool>(),
    ) {
        let (w_role, r_role) = if client {
            (Role::Client, Role::Server)
        } else {
            (Role::Server, Role::Client)
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut w = WsWriter::new(Vec::<u8>::new(), w_role);
            let mut want = Vec::new();
            for (payload, kind) in &frames {
                if *kind == 0 {
                    w.send_control(0x9, &payload[..payload.len().min(125)]).await.unwrap();
                    want.push(WsIn::Ping(Bytes::copy_from_slice(&payload[..payload.len().min(125)])));
                } else {
                    // Split into 1-3 segments, so masking offsets cross segment edges.
                    let cut = payload.len() / usize::from(*kind);
                    let segs = [
                        Bytes::copy_from_slice(&payload[..cut]),
                        Bytes::copy_from_slice(&payload[cut..]),
                    ];
                    w.send(&segs, payload.len()).await.unwrap();
                    if !payload.is_empty() {
                        want.push(WsIn::Data(Bytes::copy_from_slice(payload)));
                    }
                }
            }
            w.send_control(0x8, &[]).await.unwrap();
            let data = std::mem::take(w.io.get_mut());
            let mut r = WsReader::new(Chunked { data, pos: 0, sizes, next: 0 }, r_role);
            let mut got = Vec::new();
            loop {
                match r.next().await.unwrap() {
                    WsIn::Close => break,
                    other => got.push(other),
                }
            }
            // Frame and read boundaries carry no meaning: compare the runs of data bytes
            // between pings.
            let (got, want) = (joined(got), joined(want));
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        });
    }
}

/// A frame as a hostile peer to a reader of role `server` might write it: mostly a
/// plausible first byte and the right mask bit (so parsing goes deep), sometimes any
/// first byte or the wrong mask bit; any length encoding, lengths near every boundary
/// (the batch cap among them); then up to 300 payload bytes whatever the header claims.
fn hostile_frame(server: bool) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let b0 = prop_oneof![
        9 => (any::<bool>(), prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]))
            .prop_map(|(fin, op)| if fin { 0x80 | op } else { op }),
        1 => any::<u8>(),
    ];
    let masked = prop_oneof![9 => Just(server), 1 => Just(!server)];
    let len = prop_oneof![
        0u64..130,
        Just(125u64),
        Just(126),
        Just(127),
        Just(65_535),
        Just(65_536),
        Just(BATCH_CAP as u64),
        Just(BATCH_CAP as u64 + 1),
        Just(u64::MAX),
        any::<u64>(),
    ];
    (
        b0,
        masked,
        len,
        0u8..3,
        any::<[u8; 4]>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(b0, masked, len, encoding, key, payload)| {
            let mut f = vec![b0];
            let m = if masked { 0x80 } else { 0 };
            match encoding {
                0 => f.push(m | (len % 126) as u8),
                1 => {
                    f.push(m | 126);
                    f.extend_from_slice(&(len as u16).to_be_bytes());
                }
                _ => {
                    f.push(m | 127);
                    f.extend_from_slice(&len.to_be_bytes());
                }
            }
            if masked {
                f.extend_from_slice(&key);
            }
            f.extend_from_slice(&payload);
            f
        })
}

proptest::proptest! {
    /// Whatever a peer sends, split however, the reader never panics: it yields at most
    /// the bytes it was given, then a close or an error (EOF included), and never
    /// claims more data than arrived.
    #[test]
    fn hostile_input_errs_or_closes_and_never_panics(
        (server, frames) in proptest::prelude::any::<bool>().prop_flat_map(|server| {
            (proptest::strategy::Just(server), proptest::collection::vec(hostile_frame(server), 1..8))
        }),
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        sizes in proptest::collection::vec(
            proptest::prop_oneof![1usize..8, 1usize..700], 1..6),
    ) {
        let mut data: Vec<u8> = frames.concat();
        data.extend_from_slice(&noise);
        let total = data.len();
        let role = if server { Role::Server } else { Role::Client };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut r = WsReader::new(Chunked { data, pos: 0, sizes, next: 0 }, role);
            let mut out = 0usize;
            // Each item consumes input, so this ends; the bound only guards the test.
            for _ in 0..=total {
                match r.next().await {
                    Ok(WsIn::Data(d)) => {
                        assert!(!d.is_empty(), "an empty data item");
                        out += d.len();
                    }
                    Ok(WsIn::Ping(p)) => out += p.len(),
                    Ok(WsIn::Close) => break,
                    Err(e) => {
                        assert!(matches!(
                            e.kind(),
                            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                        ), "unexpected error kind: {e}");
                        break;
                    }
                }
            }
            assert!(out <= total, "{out} bytes out of {total} in");
        });
    }
}

#[tokio::test]
async fn rejects_wrong_masking_and_oversize() {
    let (a, b) = tokio::io::duplex(1024);
    let mut w = WsWriter::new(a, Role::Server);
    let mut r = WsReader::new(b, Role::Server);
    w.send(&[Bytes::from_static(b"x")], 1).await.unwrap();
    assert_eq!(
        r.next().await.unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    let (mut a, b) = tokio::io::duplex(1024);
    let mut r = WsReader::new(b, Role::Client);
    a.write_all(&[0x82, 127, 0, 0, 0, 0, 0x10, 0, 0, 0])
        .await
        .unwrap();
    assert_eq!(
        r.next().await.unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
}

/// A frame as a client sends it: masked with a fixed key.
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [3, 1, 4, 1];
    let mut f = vec![b0];
    assert!(payload.len() < 126);
    f.push(0x80 | payload.len() as u8);
    f.extend_from_slice(&key);
    let mut p = payload.to_vec();
    apply_mask(&mut p, key, 0);
    f.extend_from_slice(&p);
    f
}

/// Reads `bytes` as a server until an error or a close; the items before it.
async fn read_all(bytes: Vec<u8>) -> (Vec<WsIn>, io::Result<Option<PeerClose>>) {
    let mut r = WsReader::new(
        Chunked {
            data: bytes,
            pos: 0,
            sizes: vec![3, 5000],
            next: 0,
        },
        Role::Server,
    );
    let mut items = Vec::new();
    loop {
        match r.next().await {
            Ok(WsIn::Close) => return (items, Ok(r.peer_close().cloned())),
            Ok(item) => items.push(item),
            Err(e) => return (items, Err(e)),
        }
    }
}

fn code_of(r: &io::Result<Option<PeerClose>>) -> Option<u16> {
    r.as_ref().err().and_then(close_code).map(|(c, _)| c)
}

#[tokio::test]
async fn fragmentation_follows_rfc6455() {
    // A continuation with no message started: protocol error, 1002.
    let (_, r) = read_all(client_frame(0x80, b"x")).await;
    assert_eq!(code_of(&r), Some(close_code::PROTOCOL_ERROR), "{r:?}");
    // A new binary frame inside a fragmented message: 1002.
    let mut b = client_frame(0x02, b"a");
    b.extend(client_frame(0x82, b"b"));
    let (items, r) = read_all(b).await;
    assert_eq!(code_of(&r), Some(close_code::PROTOCOL_ERROR), "{r:?}");
    assert_eq!(items.len(), 1);
    // A fragmented message with a ping in the middle is fine, and after it a new one.
    let mut b = client_frame(0x02, b"ab");
    b.extend(client_frame(0x89, b"p"));
    b.extend(client_frame(0x00, b"cd"));
    b.extend(client_frame(0x80, b"ef"));
    b.extend(client_frame(0x82, b"gh"));
    b.extend(client_frame(0x88, &[0x03, 0xe8]));
    let (items, r) = read_all(b).await;
    let got: Vec<u8> = items
        .iter()
        .filter_map(|i| match i {
            WsIn::Data(d) => Some(d.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(got, b"abcdefgh");
    assert_eq!(r.unwrap().unwrap().code, Some(1000));
}

#[tokio::test]
async fn close_codes_for_each_violation() {
    // Oversize: 1009.
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(BATCH_CAP as u64 + 1).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    let (_, r) = read_all(f).await;
    assert_eq!(code_of(&r), Some(close_code::MESSAGE_TOO_BIG), "{r:?}");
    // Text: 1003.
    let (_, r) = read_all(client_frame(0x81, b"hi")).await;
    assert_eq!(code_of(&r), Some(close_code::UNSUPPORTED_DATA), "{r:?}");
    // Close bodies: one byte, a reserved code, a reason that is not UTF-8.
    let (_, r) = read_all(client_frame(0x88, &[3])).await;
    assert_eq!(code_of(&r), Some(close_code::PROTOCOL_ERROR), "{r:?}");
    let (_, r) = read_all(client_frame(0x88, &1005u16.to_be_bytes())).await;
    assert_eq!(code_of(&r), Some(close_code::PROTOCOL_ERROR), "{r:?}");
    let (_, r) = read_all(client_frame(0x88, &[0x03, 0xe8, 0xff, 0xfe])).await;
    assert_eq!(code_of(&r), Some(close_code::INVALID_PAYLOAD), "{r:?}");
    // Unmasked from a client: 1002.
    let (_, r) = read_all(vec![0x82, 1, b'x']).await;
    assert_eq!(code_of(&r), Some(close_code::PROTOCOL_ERROR), "{r:?}");
    // EOF is no protocol error: no close code.
    let (_, r) = read_all(vec![0x82]).await;
    assert_eq!(r.as_ref().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(code_of(&r), None);
}

#[tokio::test]
async fn peer_close_code_and_reason_are_read() {
    for (code, reason, want) in [
        (None, "", "no status code"),
        (Some(1000), "", "code 1000"),
        (Some(1001), "bye", "code 1001, reason \"bye\""),
        (Some(4000), "a\nb", "code 4000, reason \"a\\nb\""),
    ] {
        let mut w = WsWriter::new(Vec::<u8>::new(), Role::Client);
        match code {
            Some(c) => w.close_with(c, reason).await.unwrap(),
            None => w.send_control(0x8, &[]).await.unwrap(),
        }
        let data = std::mem::take(w.io.get_mut());
        let (_, r) = read_all(data).await;
        let close = r.unwrap().unwrap();
        assert_eq!(close.code, code);
        assert_eq!(close.reason, reason);
        assert_eq!(close.to_string(), want);
    }
    // close() is a normal closure; a long reason is cut at a character boundary.
    let mut w = WsWriter::new(Vec::<u8>::new(), Role::Client);
    w.close().await.unwrap();
    let (_, r) = read_all(std::mem::take(w.io.get_mut())).await;
    assert_eq!(r.unwrap().unwrap().code, Some(close_code::NORMAL));
    let mut w = WsWriter::new(Vec::<u8>::new(), Role::Client);
    let long = "é".repeat(100);
    w.close_with(close_code::POLICY_VIOLATION, &long)
        .await
        .unwrap();
    let (_, r) = read_all(std::mem::take(w.io.get_mut())).await;
    let close = r.unwrap().unwrap();
    assert_eq!(close.code, Some(close_code::POLICY_VIOLATION));
    assert_eq!(close.reason, "é".repeat(61));
}
