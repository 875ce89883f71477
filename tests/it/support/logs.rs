//! Log lines captured from `tracing`, for tests that read what the crate logs.

use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// What a `tracing_subscriber::fmt` subscriber wrote, as text.
#[derive(Clone, Default)]
pub(crate) struct Lines(Arc<Mutex<Vec<u8>>>);

impl Lines {
    /// Captures events at `level` and above on this thread until the guard is dropped (a
    /// `current_thread` test sees everything the layer logs while serving it).
    pub(crate) fn capture(&self, level: tracing::Level) -> DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8 logs")
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
