//! The confirmation thread: the semantic cache's stage c runs the full
//! sentence model, tens of milliseconds of matrix products a prompt, which
//! must never run on a worker's event loop. A worker sends a prompt here
//! through a bounded queue and awaits its vector on a oneshot channel,
//! with a timeout; a full queue or a late answer is a miss, never a wait.

use std::sync::Arc;

use crate::embed::Models;

/// Prompts waiting for the confirmation thread; past this, a lookup or a
/// store goes without (a miss, or an entry not indexed).
pub const CONFIRM_QUEUE_MAX: usize = 256;

/// One prompt to embed with the confirming model.
pub struct ConfirmJob {
    pub models: Arc<Models>,
    pub text: String,
    pub reply: futures_channel::oneshot::Sender<Vec<f32>>,
}

/// A sending side for the workers.
pub type ConfirmSender = crossbeam_channel::Sender<ConfirmJob>;

/// Makes the queue; [`run`] serves its receiving side.
pub fn queue() -> (ConfirmSender, crossbeam_channel::Receiver<ConfirmJob>) {
    crossbeam_channel::bounded(CONFIRM_QUEUE_MAX)
}

/// Serves jobs until every sender is gone. A job whose worker stopped
/// waiting (its receiver dropped) is skipped without running the model.
pub fn run(jobs: crossbeam_channel::Receiver<ConfirmJob>) {
    for job in jobs {
        if job.reply.is_canceled() {
            continue;
        }
        let v = job.models.confirm_embed(&job.text);
        let _ = job.reply.send(v);
    }
}

/// Asks the confirmation thread for `text`'s vector and waits at most
/// `timeout` for it; `None` when the queue is full, the thread is gone or
/// the answer is late.
pub async fn embed(
    jobs: &ConfirmSender,
    models: &Arc<Models>,
    text: &str,
    timeout: std::time::Duration,
) -> Option<Vec<f32>> {
    let (tx, rx) = futures_channel::oneshot::channel();
    jobs.try_send(ConfirmJob {
        models: Arc::clone(models),
        text: text.to_string(),
        reply: tx,
    })
    .ok()?;
    monoio::time::timeout(timeout, rx).await.ok()?.ok()
}
