//! Flow control counts bytes, but memory is buffers: 1-byte frames, frames of every size and
//! slices of read buffers against the memory they really take (issue 13, item 12).
//!
//! A counting allocator measures the live heap of the test's own thread, so the figure is
//! the real one (handles, queue slots, pinned read buffers), not a model of it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::stream::{COPY_BELOW, MAX_RECV_CHUNKS};
use super::{Connection, Event, MAX_SHARED_CHUNKS};
use crate::{Config, Frame, Side, StreamId};

/// The system allocator, counting the live bytes of each thread.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System` unchanged; the counter is a const-initialized
// thread-local `Cell`, which neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + l.size() as isize));
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get() - l.size() as isize));
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + new as isize - l.size() as isize));
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Allocations (and reallocations) `f` makes on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCS.with(Cell::get);
    let r = f();
    (r, ALLOCS.with(Cell::get) - before)
}

/// A server connection with `streams` streams the peer opened and the application holds.
fn server_with_streams(streams: u64) -> (Connection, Vec<StreamId>) {
    let mut c = Connection::new(Side::Server, Config::default(), Instant::now()).unwrap();
    let mut b = BytesMut::new();
    let ids: Vec<StreamId> = (0..streams)
        .map(|s| StreamId::new(Side::Client, s))
        .collect();
    for id in &ids {
        Frame::StreamOpen {
            id: *id,
            target: "t".into(),
        }
        .encode(&mut b)
        .unwrap();
    }
    c.handle_bytes(Instant::now(), b.freeze()).unwrap();
    while c.poll_event().is_some() {}
    (c, ids)
}

/// Sends `per_stream` bytes to each stream in frames of `frame_len`, round-robin, in
/// messages of about 256 KiB (as the driver reads them); the messages are dropped after
/// being fed, so only what the connection keeps stays alive. Never reads.
fn flood(c: &mut Connection, ids: &[StreamId], frame_len: usize, per_stream: usize) {
    let payload = Bytes::from(vec![0x5a; frame_len]);
    let mut msg = BytesMut::with_capacity(256 * 1024);
    let mut sent = 0;
    while sent < per_stream {
        let n = frame_len.min(per_stream - sent);
        for id in ids {
            Frame::StreamData {
                id: *id,
                data: payload.slice(..n),
            }
            .encode(&mut msg)
            .unwrap();
            if msg.len() >= 256 * 1024 - 64 * 1024 {
                c.handle_bytes(Instant::now(), msg.split().freeze())
                    .unwrap();
                msg = BytesMut::with_capacity(256 * 1024);
            }
        }
        sent += n;
    }
    if !msg.is_empty() {
        c.handle_bytes(Instant::now(), msg.split().freeze())
            .unwrap();
    }
    while let Some(e) = c.poll_event() {
        assert!(matches!(e, Event::Readable(_)), "{e:?}");
    }
}

/// Floods, then checks real growth against the accounted memory and the bytes buffered.
fn check(frame_len: usize, streams: u64, per_stream: usize) -> (usize, isize, usize) {
    let (mut c, ids) = server_with_streams(streams);
    let before = live();
    flood(&mut c, &ids, frame_len, per_stream);
    let real = live() - before;
    let accounted = c.recv_memory();
    let buffered = c.recv_buffered() as usize;
    assert_eq!(buffered, per_stream * streams as usize);
    assert!(
        real <= accounted as isize,
        "{frame_len}-byte frames: real {real} bytes, accounted {accounted}"
    );
    for s in c.streams.values() {
        assert!(s.recv_buf.len() <= MAX_RECV_CHUNKS);
    }
    assert!(c.recv_shared_chunks() <= MAX_SHARED_CHUNKS);
    (buffered, real, accounted)
}

#[test]
fn one_byte_frames_cost_about_their_bytes() {
    // 16 streams x 64 KiB in 1-byte frames: 1 MiB of payload in 1,048,576 frames. As slices
    // this took 32 bytes a frame plus every read buffer; copied, about the bytes themselves.
    let (buffered, real, accounted) = check(1, 16, 64 * 1024);
    assert!(
        real <= 2 * buffered as isize,
        "real {real} bytes for {buffered} buffered"
    );
    assert!(
        accounted <= 2 * buffered,
        "accounted {accounted} for {buffered}"
    );
}

#[test]
fn accounted_memory_bounds_the_real_one_for_every_frame_size() {
    for frame_len in [1, 7, COPY_BELOW - 1, COPY_BELOW, 1500, 16 * 1024, 32 * 1024] {
        check(frame_len, 8, 128 * 1024);
    }
}

#[test]
fn reads_return_every_byte_in_order_across_chunk_kinds() {
    let (mut c, ids) = server_with_streams(1);
    let id = ids[0];
    let mut b = BytesMut::new();
    let mut want = Vec::new();
    let mut x = 0u8;
    // Small and large payloads mixed, past the chunk cap.
    for i in 0..150usize {
        let n = [1, 3, 2000, 100, 5000][i % 5];
        let data: Vec<u8> = (0..n)
            .map(|_| {
                x = x.wrapping_add(1);
                x
            })
            .collect();
        want.extend_from_slice(&data);
        Frame::StreamData {
            id,
            data: Bytes::from(data),
        }
        .encode(&mut b)
        .unwrap();
    }
    c.handle_bytes(Instant::now(), b.freeze()).unwrap();
    assert!(c.streams[&id].recv_buf.len() <= MAX_RECV_CHUNKS);
    let mut got = Vec::new();
    let mut i = 0;
    while let Ok(super::ReadOutcome::Data(d)) = c.read(id, [1, 700, 10_000][i % 3]) {
        got.extend_from_slice(&d);
        i += 1;
    }
    assert_eq!(got, want);
    assert_eq!(c.recv_buffered(), 0);
    assert_eq!(c.recv_shared_chunks(), 0);
}

/// One small message (a query, an answer) in one received message, read whole: what the
/// connection does with it between the socket and the reader.
fn receive_small(c: &mut Connection, id: StreamId, len: usize) -> (Bytes, usize) {
    let mut b = BytesMut::new();
    Frame::StreamData {
        id,
        data: Bytes::from(vec![7u8; len]),
    }
    .encode(&mut b)
    .unwrap();
    let msg = b.split().freeze();
    let (got, n) = allocations(|| {
        c.handle_bytes(Instant::now(), msg).unwrap();
        while c.poll_event().is_some() {}
        match c.read(id, usize::MAX).unwrap() {
            super::ReadOutcome::Data(d) => d,
            other => panic!("{other:?}"),
        }
    });
    (got, n)
}

#[test]
fn a_small_message_read_whole_costs_one_allocation() {
    // Copied out of the read buffer (a slice would pin it), into an allocation of its
    // own size that the reader then gets as it is. A 4 KiB compact buffer, frozen with
    // room to spare, took a second allocation for its shared header (and a page of room).
    let (mut c, ids) = server_with_streams(1);
    let _ = receive_small(&mut c, ids[0], 64); // warms the event queue
    for len in [1, 64, 200, COPY_BELOW - 1] {
        let (got, allocs) = receive_small(&mut c, ids[0], len);
        assert_eq!(&got[..], &vec![7u8; len][..]);
        assert_eq!(allocs, 1, "{len}-byte message: {allocs} allocations");
        let (_, freed) = allocations(|| drop(got));
        assert_eq!(freed, 0);
    }
}

#[test]
fn small_messages_that_queue_up_share_a_compact_buffer() {
    // The second of two unread small payloads moves both into one compact buffer, where
    // later ones are appended: a queue of small messages costs about its bytes, not an
    // allocation and a chunk slot each.
    let (mut c, ids) = server_with_streams(1);
    let id = ids[0];
    let mut b = BytesMut::new();
    for i in 0..100u8 {
        Frame::StreamData {
            id,
            data: Bytes::from(vec![i; 10]),
        }
        .encode(&mut b)
        .unwrap();
    }
    let msg = b.split().freeze();
    let (_, allocs) = allocations(|| c.handle_bytes(Instant::now(), msg).unwrap());
    assert!(allocs <= 3, "{allocs} allocations for 100 small payloads");
    assert_eq!(c.streams[&id].recv_buf.len(), 1);
    let mut got = Vec::new();
    while let Ok(super::ReadOutcome::Data(d)) = c.read(id, usize::MAX) {
        got.extend_from_slice(&d);
    }
    let want: Vec<u8> = (0..100u8).flat_map(|i| [i; 10]).collect();
    assert_eq!(got, want);
}

#[test]
fn a_write_that_fits_queues_the_buffer_without_allocating() {
    // A relay's small read is a copied, vector-backed `Bytes`: a slice or clone of one
    // allocates a shared header, so the whole buffer is queued as it is.
    let mut c = Connection::new(Side::Client, Config::default(), Instant::now()).unwrap();
    let id = c.open_stream("t").unwrap();
    // The first write sizes the stream's queue and the schedule.
    c.write(id, Bytes::from_static(b"warm")).unwrap();
    while c.poll_transmit_segments(&mut crate::Transmit::new(), 1 << 20) > 0 {}
    for len in [1, 64, 4096] {
        let data = Bytes::copy_from_slice(&vec![3u8; len]);
        let ptr = data.as_ptr();
        let (n, allocs) = allocations(|| c.write(id, data).unwrap());
        assert_eq!(n, len);
        assert_eq!(allocs, 0, "{len}-byte write: {allocs} allocations");
        let mut t = crate::Transmit::new();
        while c.poll_transmit_segments(&mut t, 1 << 20) > 0 {}
        assert!(
            t.segments
                .iter()
                .any(|s| s.as_ptr() == ptr && s.len() == len),
            "the written buffer itself goes out"
        );
    }
}

#[test]
fn write_from_leaves_what_did_not_fit_in_the_callers_buffer() {
    // More than the send buffers take: the accepted prefix is queued, the rest stays with
    // the caller, in order, and an error takes nothing.
    let mut c = Connection::new(Side::Client, Config::default(), Instant::now()).unwrap();
    let id = c.open_stream("t").unwrap();
    let all: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| i as u8).collect();
    let mut data = Bytes::from(all.clone());
    let n = c.write_from(id, &mut data).unwrap();
    assert!(n > 0 && n < all.len(), "accepted {n} of {}", all.len());
    assert_eq!(&data[..], &all[n..]);
    assert_eq!(c.write_from(id, &mut data).unwrap(), 0, "no room left");
    assert_eq!(data.len(), all.len() - n);
    let unknown = StreamId::new(Side::Client, 1000);
    let before = data.len();
    assert!(c.write_from(unknown, &mut data).is_err());
    assert_eq!(data.len(), before, "an error takes nothing");
}

/// A 32 KiB frame that straddles two received messages (as a bulk frame does at the end
/// of nearly every socket read) is read as slices of those messages: no allocation, no
/// copy. Before the decoder let data out in parts, the frame was assembled into a buffer
/// of its own (one allocation and a copy of every byte).
#[test]
fn a_frame_straddling_two_messages_is_read_without_a_copy() {
    let (mut c, ids) = server_with_streams(1);
    let id = ids[0];
    let data: Vec<u8> = (0..32 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut b = BytesMut::new();
    Frame::StreamData {
        id,
        data: Bytes::from(data.clone()),
    }
    .encode(&mut b)
    .unwrap();
    let wire = b.freeze();
    let (first, second) = (wire.slice(..10_000), wire.slice(10_000..));
    // The stream's first data sizes its queue of chunks: done before measuring.
    let mut warm = BytesMut::new();
    Frame::StreamData {
        id,
        data: Bytes::from(vec![1u8; 2000]),
    }
    .encode(&mut warm)
    .unwrap();
    c.handle_bytes(Instant::now(), warm.freeze()).unwrap();
    while c.poll_event().is_some() {}
    assert!(matches!(c.read(id, usize::MAX), Ok(super::ReadOutcome::Data(d)) if d.len() == 2000));
    let (_, allocs) = allocations(|| {
        c.handle_bytes(Instant::now(), first.clone()).unwrap();
        c.handle_bytes(Instant::now(), second.clone()).unwrap();
    });
    while c.poll_event().is_some() {}
    assert_eq!(allocs, 0, "{allocs} allocations to take in one frame");
    let mut got = Vec::new();
    let mut pieces = Vec::new();
    while let Ok(super::ReadOutcome::Data(d)) = c.read(id, usize::MAX) {
        got.extend_from_slice(&d);
        pieces.push(d);
    }
    assert_eq!(got, data);
    // Each piece points into the message it came in.
    let inside = |p: &Bytes, m: &Bytes| {
        let (m0, p0) = (m.as_ptr() as usize, p.as_ptr() as usize);
        p0 >= m0 && p0 + p.len() <= m0 + m.len()
    };
    assert!(
        pieces
            .iter()
            .all(|p| inside(p, &first) || inside(p, &second)),
        "data was copied out of the received messages"
    );
    assert_eq!(c.stats().frames_received, 3, "{:?}", c.stats());
}
