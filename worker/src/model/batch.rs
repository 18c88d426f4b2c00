//! Dynamic batching, with Triton's semantics and names (`dynamic_batching` in a model's
//! config.yaml): requests for one model version whose inputs agree in everything but the
//! batch dimension are joined along it, up to `max_batch_size`, run once, and split back.
//!
//! One task per model version forms batches. It takes the oldest request, waits for a
//! free session (requests arriving meanwhile queue up), then joins every compatible
//! request already waiting; below `max_batch_size` (and not at a preferred size) it waits
//! for more until the oldest request has waited `max_queue_delay_microseconds`. A
//! request whose caller gave up (deadline, disconnect) is dropped from the queue. A
//! request that cannot join (other shapes, other outputs asked for) waits for a batch of
//! its own kind. A batch that ONNX Runtime rejects for its content is run again request
//! by request, so only the request at fault fails.

use std::collections::VecDeque;
use std::sync::Weak;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::*;

/// `dynamic_batching` of a model's config, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// How long the oldest request may wait for others to join it.
    pub max_queue_delay: Duration,
    /// Batch sizes that are sent at once when reached, without waiting for more.
    pub preferred: Vec<usize>,
}

/// The longest `max_queue_delay_microseconds` accepted: a second.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_secs(1);

/// What requests must share to run in one batch: each input's name, datatype and shape
/// without the batch dimension, and the outputs asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BatchKey {
    inputs: Vec<(String, DataType, Vec<i64>)>,
    requested: Vec<String>,
}

/// Where a batched request's answer comes.
pub(super) type Answer = oneshot::Receiver<Result<Vec<NamedTensor>, ModelError>>;

/// One request waiting to be batched.
pub(super) struct Pending {
    key: BatchKey,
    /// This request's batch size (its inputs' first dimension).
    rows: usize,
    /// Sorted by name, as the key.
    inputs: Vec<NamedTensor>,
    requested: Vec<String>,
    entered: Instant,
    reply: oneshot::Sender<Result<Vec<NamedTensor>, ModelError>>,
}

impl Pending {
    /// A request ready to queue and where its answer will come, or its inputs and
    /// outputs back when it cannot join a batch (no inputs, or inputs that disagree on
    /// the batch size): it then runs alone.
    pub(super) fn new(
        mut inputs: Vec<NamedTensor>,
        mut requested: Vec<String>,
    ) -> Result<(Pending, Answer), (Vec<NamedTensor>, Vec<String>)> {
        let rows = match inputs.first().and_then(|t| t.shape.first()) {
            Some(&rows) if rows > 0 => rows,
            _ => return Err((inputs, requested)),
        };
        if inputs.iter().any(|t| t.shape.first() != Some(&rows)) {
            return Err((inputs, requested));
        }
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
        requested.sort();
        let key = BatchKey {
            inputs: inputs
                .iter()
                .map(|t| (t.name.clone(), t.data.datatype(), t.shape[1..].to_vec()))
                .collect(),
            requested: requested.clone(),
        };
        let (reply, answer) = oneshot::channel();
        Ok((
            Pending {
                key,
                rows: usize::try_from(rows).unwrap_or(usize::MAX),
                inputs,
                requested,
                entered: Instant::now(),
                reply,
            },
            answer,
        ))
    }
}

/// Forms batches for `model` from `queue` until the model is dropped.
pub(super) async fn form_batches(
    model: Weak<LoadedModel>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    permits: Arc<Semaphore>,
    policy: BatchPolicy,
    max_batch: usize,
) {
    // Requests taken from the channel that could not join the batch being formed.
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    loop {
        let head = match waiting.pop_front() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Some(loaded) = model.upgrade() else {
            return;
        };
        loaded.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
        if head.reply.is_closed() {
            continue;
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            let _ = head.reply.send(Err(ModelError::Run {
                model: loaded.name.clone(),
                reason: RunError::Unloading,
            }));
            return;
        };
        let until = head.entered + policy.max_queue_delay;
        let mut rows = head.rows;
        let mut batch = vec![head];
        loop {
            if rows >= max_batch {
                break;
            }
            let fits = |p: &Pending| p.key == batch[0].key && rows + p.rows <= max_batch;
            // Those already waiting first (oldest first), then the channel.
            let next = match waiting.iter().position(fits) {
                Some(i) => waiting.remove(i),
                None => match queue.try_recv() {
                    Ok(p) => Some(p),
                    // Nothing more now: a preferred size goes at once, else wait for more
                    // until the oldest request's delay is up.
                    Err(mpsc::error::TryRecvError::Empty) if policy.preferred.contains(&rows) => {
                        None
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::time::timeout_at(until.into(), queue.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                },
            };
            let Some(next) = next else {
                break;
            };
            // A request counts in the queue depth until it joins a batch or is dropped
            // (its caller gone); one that waits for another batch still counts.
            if next.reply.is_closed() {
                loaded.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            } else if fits(&next) {
                loaded.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                rows += next.rows;
                batch.push(next);
            } else {
                waiting.push_back(next);
            }
        }
        tracing::trace!(model = %loaded.name, requests = batch.len(), rows, "batch formed");
        tokio::spawn(execute(loaded, batch, permit));
    }
}

/// Counts a batch's requests as running for as long as it lives (a panicking run too).
struct Running<'a>(&'a std::sync::atomic::AtomicU32, u32);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// Runs one batch on the session `permit` holds and answers each request.
async fn execute(model: Arc<LoadedModel>, batch: Vec<Pending>, permit: OwnedSemaphorePermit) {
    // A caller that gave up while the batch waited for its session is not run.
    let batch: Vec<Pending> = batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let started = Instant::now();
    let count = batch.len();
    let sizes: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let requested = batch[0].requested.clone();
    let mut replies = Vec::with_capacity(count);
    let mut per_request = Vec::with_capacity(count);
    for p in batch {
        replies.push((p.reply, p.entered));
        per_request.push(p.inputs);
    }
    let runner = Arc::clone(&model);
    let answers = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let n = u32::try_from(count).unwrap_or(u32::MAX);
        runner.stats.in_flight.fetch_add(n, Ordering::Relaxed);
        let _running = Running(&runner.stats.in_flight, n);
        if count == 1 {
            let inputs = per_request.pop().unwrap_or_default();
            return vec![runner.run_blocking(inputs, &requested, started, 1)];
        }
        // Kept to run the requests one by one should the batch be rejected for its content.
        let kept = per_request.clone();
        match runner.run_blocking(join_inputs(per_request), &requested, started, n) {
            Ok(outputs) => match split_outputs(outputs, &sizes) {
                Ok(split) => split.into_iter().map(Ok).collect(),
                Err(reason) => (0..count)
                    .map(|_| Err(runner.run_error(RunError::BatchSplit(reason.clone()))))
                    .collect(),
            },
            // Which request is at fault is not known: each runs alone on this session, so
            // only it fails, with its own error.
            Err(ModelError::InvalidInput { .. }) => kept
                .into_iter()
                .map(|inputs| runner.run_blocking(inputs, &requested, Instant::now(), 1))
                .collect(),
            Err(e) => {
                let message = e.to_string();
                (0..count)
                    .map(|_| Err(runner.run_error(RunError::Batch(message.clone()))))
                    .collect()
            }
        }
    })
    .await
    .unwrap_or_else(|e| {
        let message = e.to_string();
        (0..count)
            .map(|_| Err(model.run_error(RunError::Batch(message.clone()))))
            .collect()
    });
    let ran = started.elapsed();
    for ((reply, entered), answer) in replies.into_iter().zip(answers) {
        model.record(answer.is_ok(), started - entered, ran);
        let _ = reply.send(answer);
    }
}

/// Joins each input of the requests along the first dimension (inputs sorted by name,
/// the same in every request: they share a [`BatchKey`]).
fn join_inputs(per_request: Vec<Vec<NamedTensor>>) -> Vec<NamedTensor> {
    let mut requests = per_request.into_iter();
    let Some(mut joined) = requests.next() else {
        return Vec::new();
    };
    for inputs in requests {
        for (into, from) in joined.iter_mut().zip(inputs) {
            if let (Some(a), Some(b)) = (into.shape.first_mut(), from.shape.first()) {
                *a += *b;
            }
            append(&mut into.data, from.data);
        }
    }
    joined
}

/// Splits each output along the first dimension into `sizes` rows per request.
fn split_outputs(
    outputs: Vec<NamedTensor>,
    sizes: &[usize],
) -> Result<Vec<Vec<NamedTensor>>, String> {
    let total: usize = sizes.iter().sum();
    let mut per_request: Vec<Vec<NamedTensor>> = sizes.iter().map(|_| Vec::new()).collect();
    for out in outputs {
        let first = out.shape.first().copied().unwrap_or(0);
        if usize::try_from(first).ok() != Some(total) {
            return Err(format!(
                "output '{}' has {first} rows for a batch of {total}",
                out.name
            ));
        }
        let row: usize = out.shape[1..]
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .product();
        let lengths: Vec<usize> = sizes.iter().map(|&n| n * row).collect();
        for ((data, &n), target) in split(out.data, &lengths)
            .into_iter()
            .zip(sizes)
            .zip(per_request.iter_mut())
        {
            let mut shape = out.shape.clone();
            shape[0] = i64::try_from(n).unwrap_or(i64::MAX);
            target.push(NamedTensor {
                name: out.name.clone(),
                shape,
                data,
            });
        }
    }
    Ok(per_request)
}

macro_rules! by_variant {
    ($($variant:ident),*) => {
        /// Appends `from`'s elements to `into` (same datatype: they share a key).
        fn append(into: &mut TensorData, from: TensorData) {
            match (into, from) {
                $((TensorData::$variant(a), TensorData::$variant(b)) => a.extend(b),)*
                _ => {}
            }
        }

        /// Splits `data` into consecutive pieces of `lengths` elements.
        fn split(data: TensorData, lengths: &[usize]) -> Vec<TensorData> {
            match data {
                $(TensorData::$variant(v) => {
                    let mut elements = v.into_iter();
                    lengths
                        .iter()
                        .map(|&n| TensorData::$variant(elements.by_ref().take(n).collect()))
                        .collect()
                })*
            }
        }
    };
}

by_variant!(
    Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
);

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: &[i64], values: &[f32]) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data: TensorData::Fp32(values.to_vec()),
        }
    }

    #[test]
    fn joins_and_splits_along_the_batch_dimension() {
        let joined = join_inputs(vec![
            vec![tensor("x", &[1, 2], &[1.0, 2.0])],
            vec![tensor("x", &[2, 2], &[3.0, 4.0, 5.0, 6.0])],
        ]);
        assert_eq!(
            joined,
            vec![tensor("x", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])]
        );
        let split = split_outputs(joined, &[1, 2]).expect("split");
        assert_eq!(split[0], vec![tensor("x", &[1, 2], &[1.0, 2.0])]);
        assert_eq!(split[1], vec![tensor("x", &[2, 2], &[3.0, 4.0, 5.0, 6.0])]);
    }

    #[test]
    fn an_output_without_the_batch_rows_is_an_error() {
        let out = vec![tensor("y", &[2], &[1.0, 2.0])];
        let err = split_outputs(out, &[1, 2]).expect_err("2 rows for 3");
        assert!(err.contains("'y' has 2 rows for a batch of 3"), "{err}");
    }

    #[test]
    fn requests_join_only_with_the_same_inner_shape_and_outputs() {
        let key = |shape: &[i64], requested: &[&str]| {
            Pending::new(
                vec![tensor(
                    "x",
                    shape,
                    &vec![0.0; shape.iter().product::<i64>() as usize],
                )],
                requested.iter().map(|s| s.to_string()).collect(),
            )
            .map(|(p, _)| p.key)
            .expect("batchable")
        };
        assert_eq!(key(&[1, 3], &[]), key(&[4, 3], &[]));
        assert_ne!(key(&[1, 3], &[]), key(&[1, 4], &[]));
        assert_ne!(key(&[1, 3], &["y"]), key(&[1, 3], &[]));
        // Inputs that disagree on the batch size run alone.
        let mixed = Pending::new(
            vec![
                tensor("a", &[1, 1], &[0.0]),
                tensor("b", &[2, 1], &[0.0, 0.0]),
            ],
            Vec::new(),
        );
        assert!(mixed.is_err());
    }
}
