//! Device output that cannot stall a vCPU: the bytes a guest writes to its UART go into a
//! bounded buffer, and a thread of their own writes them to the real stream (stdout). A
//! guest that writes faster than the stream drains, or into a pipe nobody reads, waits for
//! room like a real UART with a full FIFO — but only until the VM's [`GiveUp`] time (the
//! time limit, or the VM's end); after that its bytes are dropped, so `--timeout` holds
//! whatever stdout does.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Room in the buffer: a few pages of console text.
pub const OUTPUT_BUFFER: usize = 16 << 10;
/// How often a waiting writer looks at the give-up time (it may move while it waits).
const RECHECK: Duration = Duration::from_millis(20);

/// When writers stop waiting for room: never, until set.
#[derive(Debug, Default)]
pub struct GiveUp(Mutex<Option<Instant>>);

impl GiveUp {
    /// A shared handle, not set.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Writers give up at `when`.
    pub fn at(&self, when: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(when);
    }

    /// Writers give up now (the VM has ended).
    pub fn now(&self) {
        self.at(Instant::now());
    }

    /// Time left before giving up: `None` for "wait as long as it takes".
    fn left(&self) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    /// The drain thread holds bytes it is writing.
    writing: bool,
    /// The writer side is gone: drain and stop.
    closed: bool,
    /// Bytes dropped after giving up, or after the stream failed.
    dropped: u64,
    /// The stream failed (reported once).
    failed: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    give_up: Arc<GiveUp>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on `changed` for at most the recheck interval and the time left; false once the
    /// give-up time has passed.
    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> (MutexGuard<'a, State>, bool) {
        let left = self.give_up.left();
        if left == Some(Duration::ZERO) {
            return (state, false);
        }
        let pause = left.map_or(RECHECK, |l| l.min(RECHECK));
        let (state, _) = self
            .changed
            .wait_timeout(state, pause)
            .unwrap_or_else(|p| p.into_inner());
        (state, true)
    }
}

/// The writer end: what a device writes to.
pub struct BoundedOutput {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BoundedOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedOutput").finish_non_exhaustive()
    }
}

impl BoundedOutput {
    /// Starts the thread that writes to `out`; writers wait for room until `give_up`.
    pub fn new(out: Box<dyn Write + Send>, give_up: Arc<GiveUp>) -> std::io::Result<Self> {
        Self::with_start(out, give_up, Box::new(|| {}))
    }

    /// [`BoundedOutput::new`], with `on_start` run first on the thread (its seccomp filter).
    pub fn with_start(
        out: Box<dyn Write + Send>,
        give_up: Arc<GiveUp>,
        on_start: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            give_up,
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("console-output".into())
            .spawn(move || {
                on_start();
                drain(&theirs, out)
            })?;
        Ok(Self { shared })
    }

    /// Bytes dropped so far (after giving up, or after the stream failed).
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }
}

/// The drain thread: writes what is buffered until the writer end is gone.
fn drain(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut chunk = Vec::with_capacity(4096);
    loop {
        let mut state = shared.lock();
        while state.buf.is_empty() && !state.closed {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        if state.buf.is_empty() {
            return; // closed and drained
        }
        let n = state.buf.len().min(chunk.capacity());
        chunk.clear();
        chunk.extend(state.buf.drain(..n));
        state.writing = true;
        drop(state);
        shared.changed.notify_all();
        let result = out.write_all(&chunk).and_then(|()| out.flush());
        let mut state = shared.lock();
        state.writing = false;
        if let Err(e) = result {
            if !state.failed {
                tracing::warn!("console output failed (further output is dropped): {e}");
            }
            state.failed = true;
            state.dropped += chunk.len() as u64;
        }
        drop(state);
        shared.changed.notify_all();
    }
}

impl Write for BoundedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        loop {
            let room = OUTPUT_BUFFER.saturating_sub(state.buf.len());
            if state.failed {
                state.dropped += data.len() as u64;
                return Ok(data.len());
            }
            if room > 0 || data.is_empty() {
                let n = room.min(data.len());
                state.buf.extend(&data[..n]);
                drop(state);
                self.shared.changed.notify_all();
                return Ok(n);
            }
            let waited;
            (state, waited) = self.shared.wait(state);
            if !waited {
                state.dropped += data.len() as u64;
                return Ok(data.len());
            }
        }
    }

    /// Waits until everything buffered is written (or the give-up time has passed).
    fn flush(&mut self) -> std::io::Result<()> {
        let mut state = self.shared.lock();
        while !state.buf.is_empty() || state.writing {
            let waited;
            (state, waited) = self.shared.wait(state);
            if !waited {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for BoundedOutput {
    fn drop(&mut self) {
        // The drain thread writes what is left, then ends; it is not joined, since a stream
        // nobody reads may block it for good (the process's exit ends it then).
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::SharedBuffer;

    /// A stream that blocks every write until released.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>);
    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (m, cv) = &*self.0;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_arrives_in_order_and_flush_waits_for_it() {
        let sink = SharedBuffer::default();
        let mut out = BoundedOutput::new(Box::new(sink.clone()), GiveUp::new()).unwrap();
        for i in 0..50_000u32 {
            out.write_all(&[(i % 251) as u8]).unwrap();
        }
        out.flush().unwrap();
        let got = sink.contents();
        assert_eq!(got.len(), 50_000);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        assert_eq!(out.dropped(), 0);
    }

    #[test]
    fn a_stream_nobody_reads_stalls_writers_only_until_the_give_up_time() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let give_up = GiveUp::new();
        let mut out = BoundedOutput::new(Box::new(Stuck(gate.clone())), give_up.clone()).unwrap();
        give_up.at(Instant::now() + Duration::from_millis(200));
        let started = Instant::now();
        for _ in 0..(OUTPUT_BUFFER * 3) {
            out.write_all(b"x").unwrap();
        }
        out.flush().unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(out.dropped() > 0);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }
}
