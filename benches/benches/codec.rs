//! Measures the frame codec alone: StreamData encode and `FrameDecoder` decode per payload size, and a Connect control message.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use culvert_proto::control::ConnectExt;
use culvert_proto::{Control, Frame, FrameDecoder, StreamId, MAX_PAYLOAD_LEN};
use uuid::Uuid;

mod common;
use common::BenchClock;

/// Stream used by every data frame: id 4 encodes as a one-byte varint.
const ID: StreamId = StreamId(4);
/// Bytes of frames per encoded or decoded batch: one simulated WebSocket message,
/// the same cap as the in-memory pair's (`culvert_testkit::BATCH`).
const BATCH_BYTES: usize = 256 * 1024;

/// Payload sizes: 64 B, 1 KiB, 16 KiB and the largest payload a frame carries for
/// a one-byte stream id (65,531 - 1 = 65,530 B).
fn sizes() -> [(&'static str, usize); 4] {
    [
        ("64B", 64),
        ("1KiB", 1024),
        ("16KiB", 16 * 1024),
        ("max_65530B", MAX_PAYLOAD_LEN - 1),
    ]
}

/// Frames of `size` in one batch.
fn frames_per_batch(size: usize) -> usize {
    (BATCH_BYTES / size).max(4)
}

fn data_frame(size: usize) -> Frame {
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    Frame::StreamData {
        id: ID,
        data: Bytes::from(payload),
    }
}

/// A batch of `count` encoded frames as one received message.
fn encoded_batch(frame: &Frame, count: usize) -> Bytes {
    let mut buf = BytesMut::new();
    for _ in 0..count {
        frame.encode(&mut buf).expect("encodable");
    }
    buf.freeze()
}

/// Encodes `count` frames into `buf` (cleared first, capacity kept: the steady state of a sender).
fn encode_batch(buf: &mut BytesMut, frame: &Frame, count: usize) {
    buf.clear();
    for _ in 0..count {
        frame.encode(buf).expect("encodable");
    }
    black_box(&buf[..]);
}

/// Decodes every frame of `batch` with a fresh decoder (the receive path); returns payload bytes.
fn decode_batch(batch: &Bytes, count: usize) -> usize {
    let mut dec = FrameDecoder::new();
    dec.push(batch.clone());
    let mut frames = 0;
    let mut bytes = 0;
    while let Some(f) = dec.next_frame().expect("valid batch") {
        if let Frame::StreamData { data, .. } = &f {
            bytes += data.len();
        }
        frames += 1;
        black_box(f);
    }
    assert_eq!(frames, count);
    bytes
}

fn data_group(c: &mut Criterion<BenchClock>, group_name: &str, per_frame: bool) {
    let mut g = c.benchmark_group(group_name);
    for (label, size) in sizes() {
        let frame = data_frame(size);
        let count = frames_per_batch(size);
        g.throughput(if per_frame {
            Throughput::Elements(count as u64)
        } else {
            Throughput::Bytes((count * size) as u64)
        });
        let mut buf = BytesMut::with_capacity(count * (size + 16));
        g.bench_function(BenchmarkId::new("encode", label), |b| {
            b.iter(|| encode_batch(&mut buf, &frame, count))
        });
        let batch = encoded_batch(&frame, count);
        g.bench_function(BenchmarkId::new("decode", label), |b| {
            b.iter(|| decode_batch(&batch, count))
        });
    }
    g.finish();
}

/// Payload throughput (bytes of stream data per second).
fn data_bytes(c: &mut Criterion<BenchClock>) {
    data_group(c, "codec_bytes", false);
}

/// Frame rate (frames per second).
fn data_frames(c: &mut Criterion<BenchClock>) {
    data_group(c, "codec_frames", true);
}

fn connect() -> Frame {
    Frame::Control(Control::Connect {
        service_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        connection_id: Uuid::from_u128(0xfedc_ba98_7654_3210_fedc_ba98_7654_3210),
        client_addr: "203.0.113.77:54321".to_owned(),
        ext: Some(ConnectExt {
            stream_id: StreamId(1234),
        }),
    })
}

/// Connect messages per second, encoded and decoded one at a time (the control path).
fn control(c: &mut Criterion<BenchClock>) {
    let mut g = c.benchmark_group("codec_control");
    g.throughput(Throughput::Elements(1));
    let msg = connect();
    let mut buf = BytesMut::with_capacity(256);
    g.bench_function("encode/Connect", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&msg).encode(&mut buf).expect("encodable");
            black_box(&buf[..]);
        })
    });
    let wire = encoded_batch(&msg, 1);
    g.bench_function("decode/Connect", |b| {
        b.iter(|| {
            let mut dec = FrameDecoder::new();
            dec.push(black_box(&wire).clone());
            let f = dec.next_frame().expect("valid").expect("complete");
            debug_assert_eq!(f, msg);
            black_box(f)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = data_bytes, data_frames, control
}
criterion_main!(benches);
