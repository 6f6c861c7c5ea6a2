//! The store thread: owns the write side of the store and commits the core's
//! batches off the loop thread.
//!
//! The loop hands over each iteration's [`Batch`] ([`StoreThread::submit`])
//! and goes on serving; the thread takes batches in order, applies the ones
//! that queued up behind each other in one transaction (group commit, one
//! fsync with `--durability full`), and sends one [`Completion`] per batch
//! back, in order, waking the loop through a [`mio::Waker`]. SQLite's WAL
//! checkpoints run here too: they happen on the committing connection.
//!
//! Once a batch fails, the later batches of its epoch are refused without
//! being applied ([`Batch::epoch`]): they were built on the failed one's
//! state. Nothing here knows SQLite: any [`BatchWriter`] that is `Send` can
//! stand behind this thread, a networked store included.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::core::{Batch, BatchWriter, Completion, StoreError};

/// Most batches committed in one transaction.
const MAX_GROUP: usize = 64;

/// The loop's handle on the store thread.
pub struct StoreThread {
    batches: Option<Sender<Batch>>,
    completions: Receiver<Completion>,
    thread: Option<JoinHandle<()>>,
}

impl StoreThread {
    /// Starts the thread around `writer`. `delay` is a diagnostic
    /// (`--store-delay-ms`): the thread waits that long before each group,
    /// as a slow disk would.
    pub fn spawn<W: BatchWriter + Send + 'static>(
        writer: W,
        waker: Arc<mio::Waker>,
        delay: Duration,
    ) -> std::io::Result<StoreThread> {
        let (batches, inbox) = mpsc::channel::<Batch>();
        let (done, completions) = mpsc::channel::<Completion>();
        let thread =
            std::thread::Builder::new().name("store".into()).spawn(move || run(writer, inbox, done, waker, delay))?;
        Ok(StoreThread { batches: Some(batches), completions, thread: Some(thread) })
    }

    /// Hands a batch over. If the thread is gone (it panicked), the batch
    /// fails at once: its completion is returned for the loop to apply.
    pub fn submit(&self, batch: Batch) -> Option<Completion> {
        let id = batch.id;
        match &self.batches {
            Some(tx) if tx.send(batch).is_ok() => None,
            _ => Some(Completion {
                id,
                result: Err(StoreError { context: "store thread", detail: "the store thread is gone".into() }),
                took: Duration::ZERO,
            }),
        }
    }

    /// The next completion, if one is waiting (never blocks).
    pub fn try_completion(&self) -> Option<Completion> {
        self.completions.try_recv().ok()
    }

    /// Waits up to `timeout` for the next completion (used only while
    /// draining at shutdown, when the loop has nothing else to do).
    pub fn wait_completion(&self, timeout: Duration) -> Option<Completion> {
        self.completions.recv_timeout(timeout).ok()
    }

    /// Lets the thread finish what it was handed and waits for it.
    pub fn shutdown(&mut self) {
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run<W: BatchWriter>(
    mut writer: W,
    inbox: Receiver<Batch>,
    done: Sender<Completion>,
    waker: Arc<mio::Waker>,
    delay: Duration,
) {
    let mut failed_epoch: Option<u64> = None;
    let mut next: Option<Batch> = None;
    loop {
        let first = match next.take() {
            Some(b) => b,
            None => match inbox.recv() {
                Ok(b) => b,
                Err(_) => return, // the loop is gone and everything was taken
            },
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let started = Instant::now();
        let epoch = first.epoch;
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match inbox.try_recv() {
                Ok(b) if b.epoch == epoch => group.push(b),
                Ok(b) => {
                    next = Some(b);
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let results = if failed_epoch == Some(epoch) {
            let refused = StoreError { context: "commit", detail: "an earlier batch of this epoch failed".into() };
            vec![Err(refused); group.len()]
        } else {
            let refs: Vec<&Batch> = group.iter().collect();
            writer.apply_group(&refs)
        };
        if results.iter().any(Result::is_err) {
            failed_epoch = Some(epoch);
        }
        let took = started.elapsed() / group.len() as u32;
        for (batch, result) in group.iter().zip(results) {
            if done.send(Completion { id: batch.id, result, took }).is_err() {
                return;
            }
        }
        if let Err(e) = waker.wake() {
            log::error!("cannot wake the loop: {e}");
        }
    }
}
