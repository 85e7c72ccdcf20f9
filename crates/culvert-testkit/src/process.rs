//! Child processes under test: run to completion with a bound, or kept running with their
//! output collected line by line so a test can wait (bounded) for a line. Every child is
//! killed by its PID (through `Child::kill`) when its guard drops, also when a test panics.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a killed child may take to be reaped.
const REAP: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion with its output captured; kills it and fails the test if it
/// takes longer than `limit`.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_child(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not finish within {limit:?}");
    });
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// Waits at most `limit` for `child` to exit.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    /// When each line was read from the pipe (within microseconds of its printing).
    at: Vec<Instant>,
    /// Output pipes not yet at end of file: a process can exit before its reader threads
    /// have taken its last lines.
    open: usize,
}

/// How long an exited process's output may take to reach its reader threads.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// A long-running child process whose stderr (and stdout) lines are collected. It is
/// killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    lines: Arc<(Mutex<Lines>, Condvar)>,
}

impl Proc {
    /// Starts `cmd`, naming it `name` in messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let lines: Arc<(Mutex<Lines>, Condvar)> = Arc::default();
        let out = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let err = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let streams: Vec<_> = [out, err].into_iter().flatten().collect();
        lines.0.lock().unwrap_or_else(|p| p.into_inner()).open = streams.len();
        for stream in streams {
            let lines = lines.clone();
            std::thread::spawn(move || {
                let (m, cv) = &*lines;
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                    g.lines.push(line);
                    g.at.push(Instant::now());
                    drop(g);
                    cv.notify_all();
                }
                m.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                cv.notify_all();
            });
        }
        Proc {
            name: name.to_owned(),
            child,
            lines,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        let (m, _) = &*self.lines;
        m.lock().unwrap_or_else(|p| p.into_inner()).lines.join("\n")
    }

    /// Number of lines printed so far.
    pub fn line_count(&self) -> usize {
        let (m, _) = &*self.lines;
        m.lock().unwrap_or_else(|p| p.into_inner()).lines.len()
    }

    /// Waits for the first line, from line `from` on, containing `needle`; `Err` with the
    /// log if the process exits first or `limit` passes.
    pub fn try_wait_line(
        &mut self,
        needle: &str,
        from: usize,
        limit: Duration,
    ) -> Result<String, String> {
        self.try_wait_match(&|l| l.contains(needle), needle, from, limit)
    }

    /// Waits for the first line, from line `from` on, satisfying `pred` (described by
    /// `what`); `Err` with the log if the process exits first or `limit` passes.
    pub fn try_wait_match(
        &mut self,
        pred: &dyn Fn(&str) -> bool,
        what: &str,
        from: usize,
        limit: Duration,
    ) -> Result<String, String> {
        self.try_wait_match_at(pred, what, from, limit)
            .map(|(line, _)| line)
    }

    /// [`Proc::try_wait_match`], also returning when the line was printed (read from the
    /// pipe), which may be before this call.
    pub fn try_wait_match_at(
        &mut self,
        pred: &dyn Fn(&str) -> bool,
        what: &str,
        from: usize,
        limit: Duration,
    ) -> Result<(String, Instant), String> {
        let deadline = Instant::now() + limit;
        let found = |g: &Lines| {
            g.lines
                .iter()
                .zip(&g.at)
                .skip(from)
                .find(|(l, _)| pred(l))
                .map(|(l, at)| (l.clone(), *at))
        };
        loop {
            {
                let (m, cv) = &*self.lines;
                let g = m.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(hit) = found(&g) {
                    return Ok(hit);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "{}: no line with {what:?} within {limit:?}; output:\n{}",
                        self.name,
                        g.lines.join("\n")
                    ));
                }
                let _ = cv
                    .wait_timeout(g, left.min(Duration::from_millis(100)))
                    .unwrap_or_else(|p| p.into_inner());
            }
            if let Some(status) = self.exited() {
                let (m, _) = &*self.lines;
                let g = m.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(hit) = found(&g) {
                    return Ok(hit);
                }
                return Err(format!(
                    "{} exited ({status}) before printing {what:?}; output:\n{}",
                    self.name,
                    g.lines.join("\n")
                ));
            }
        }
    }

    /// Like [`Proc::try_wait_line`], failing the test on `Err`.
    pub fn wait_line(&mut self, needle: &str, from: usize, limit: Duration) -> String {
        self.try_wait_line(needle, from, limit)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether it has exited.
    /// Once it has exited, its log is complete (its output pipes have been read to the
    /// end, or [`OUTPUT_DRAIN`] has passed).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten()?;
        let deadline = Instant::now() + OUTPUT_DRAIN;
        let (m, cv) = &*self.lines;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        while g.open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(status)
    }

    /// Waits at most `limit` for it to exit; its status, or `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut status = None;
        crate::poll_until(limit, || {
            status = self.exited();
            status.is_some()
        });
        status
    }

    /// Waits at most `limit` for it to exit; fails the test with its log if it does not.
    #[track_caller]
    pub fn expect_exit(&mut self, limit: Duration) -> ExitStatus {
        self.wait_exit(limit).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {limit:?}; output:\n{}",
                self.name,
                self.log()
            )
        })
    }

    /// Kills it with SIGKILL (by its PID) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = wait_child(&mut self.child, REAP);
    }

    /// Sends `signal` (such as `-INT`) to this child, by its PID, and waits at most `limit`
    /// for it to exit; kills it if it does not.
    pub fn stop_with(&mut self, signal: &str, limit: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if wait_child(&mut self.child, limit).is_none() {
            self.kill();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}
