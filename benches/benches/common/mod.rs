//! The clock the bench files (codec, mux, tls_records) measure with: wall time by
//! default, or the bench thread's own CPU time with `CULVERT_BENCH_CLOCK=cpu`, which leaves
//! out the time the thread spends descheduled on a loaded machine. Every benchmark here runs on
//! one thread (yamux on a current-thread runtime), so CPU time covers all its work.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::Criterion;

/// Formats values as WallTime does (nanoseconds as durations, throughput per second).
static WALL: WallTime = WallTime;

/// Wall-clock or thread CPU time, chosen once from the environment.
pub struct BenchClock {
    cpu: bool,
}

impl BenchClock {
    /// Reads `CULVERT_BENCH_CLOCK` (`cpu` or `wall`, default `wall`).
    pub fn from_env() -> BenchClock {
        let cpu = std::env::var("CULVERT_BENCH_CLOCK").is_ok_and(|v| v == "cpu");
        if cpu {
            eprintln!("measuring thread CPU time (CULVERT_BENCH_CLOCK=cpu)");
        }
        BenchClock { cpu }
    }

    fn now_ns(&self) -> u64 {
        if self.cpu {
            thread_cpu_ns()
        } else {
            static EPOCH: OnceLock<Instant> = OnceLock::new();
            EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
        }
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for BenchClock {
    type Intermediate = u64;
    type Value = Duration;

    fn start(&self) -> u64 {
        self.now_ns()
    }

    fn end(&self, start: u64) -> Duration {
        Duration::from_nanos(self.now_ns().saturating_sub(start))
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, d: &Duration) -> f64 {
        d.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

/// The Criterion instance the bench files use.
pub fn criterion() -> Criterion<BenchClock> {
    Criterion::default().with_measurement(BenchClock::from_env())
}
