//! Dynamic batching, with Triton's semantics and names (`dynamic_batching` in a model's
//! config.yaml): requests for one model version whose inputs agree in everything but the
//! batch dimension are joined along it, up to `max_batch_size`, run once, and split back.
//!
//! One task per model version forms batches. It waits for a free session (requests
//! arriving meanwhile queue up), takes the waiting request of highest priority
//! (`localml.priority`; the oldest among equals), then joins compatible requests already
//! waiting, again by priority; below `max_batch_size` (and not at a preferred size) it
//! waits for more until the first request has waited `max_queue_delay_microseconds`. A
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
pub(super) type Answer = oneshot::Receiver<Result<Vec<Output>, ModelError>>;

/// One request waiting to be batched.
pub(super) struct Pending {
    key: BatchKey,
    /// This request's batch size (its inputs' first dimension).
    rows: usize,
    /// Higher first (`localml.priority`).
    priority: i64,
    /// Sorted by name, as the key.
    inputs: Vec<Input>,
    requested: Vec<String>,
    entered: Instant,
    reply: oneshot::Sender<Result<Vec<Output>, ModelError>>,
}

impl Pending {
    /// A request ready to queue and where its answer will come, or its inputs and
    /// outputs back when it cannot join a batch (no inputs, or inputs that disagree on
    /// the batch size): it then runs alone.
    pub(super) fn new(
        mut inputs: Vec<Input>,
        mut requested: Vec<String>,
        priority: i64,
    ) -> Result<(Pending, Answer), (Vec<Input>, Vec<String>)> {
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
                .map(|t| (t.name.clone(), t.datatype, t.shape[1..].to_vec()))
                .collect(),
            requested: requested.clone(),
        };
        let (reply, answer) = oneshot::channel();
        Ok((
            Pending {
                key,
                rows: usize::try_from(rows).unwrap_or(usize::MAX),
                priority,
                inputs,
                requested,
                entered: Instant::now(),
                reply,
            },
            answer,
        ))
    }
}

/// The waiting request that goes first among those that `fit`: highest priority, then
/// the oldest (`waiting` is in arrival order).
fn first(waiting: &VecDeque<Pending>, fits: impl Fn(&Pending) -> bool) -> Option<usize> {
    waiting
        .iter()
        .enumerate()
        .filter(|(_, p)| fits(p))
        .max_by(|(i, a), (j, b)| a.priority.cmp(&b.priority).then(j.cmp(i)))
        .map(|(i, _)| i)
}

/// Forms batches for `model` from `queue` until the model is dropped.
pub(super) async fn form_batches(
    model: Weak<LoadedModel>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    permits: Arc<Semaphore>,
    policy: BatchPolicy,
    max_batch: usize,
) {
    // Requests taken from the channel and not yet in a batch, in arrival order.
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(p) => waiting.push_back(p),
                None => return,
            }
        }
        let Some(loaded) = model.upgrade() else {
            return;
        };
        // A free session first: the request to run is then chosen among all that
        // arrived meanwhile.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            for p in waiting.drain(..) {
                let _ = p.reply.send(Err(ModelError::Run {
                    model: loaded.name.clone(),
                    reason: RunError::Unloading,
                }));
            }
            return;
        };
        while let Ok(p) = queue.try_recv() {
            waiting.push_back(p);
        }
        // Callers that gave up leave the queue.
        waiting.retain(|p| {
            let open = !p.reply.is_closed();
            if !open {
                loaded.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            }
            open
        });
        let Some(head) = first(&waiting, |_| true).and_then(|i| waiting.remove(i)) else {
            continue;
        };
        loaded.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
        let until = head.entered + policy.max_queue_delay;
        let mut rows = head.rows;
        let mut batch = vec![head];
        loop {
            if rows >= max_batch {
                break;
            }
            let fits = |p: &Pending| p.key == batch[0].key && rows + p.rows <= max_batch;
            // Those already waiting first (by priority), then the channel.
            let next = match first(&waiting, fits) {
                Some(i) => waiting.remove(i),
                None => match queue.try_recv() {
                    Ok(p) => Some(p),
                    // Nothing more now: a preferred size goes at once, else wait for more
                    // until the first request's delay is up.
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
        let alone = |inputs: Vec<Input>, started: Instant| {
            runner
                .decode(inputs)
                .and_then(|inputs| runner.run_blocking(inputs, &requested, started, 1))
        };
        if count == 1 {
            return vec![alone(per_request.pop().unwrap_or_default(), started)];
        }
        // Kept to run the requests one by one should the batch be rejected for its content
        // (raw inputs are shared, not copied).
        let kept = per_request.clone();
        let joined = match join_inputs(per_request) {
            Ok(joined) => joined,
            // Inputs are checked before they queue; should one still not decode, each
            // request runs alone and only the one at fault fails.
            Err(_) => {
                return kept
                    .into_iter()
                    .map(|inputs| alone(inputs, Instant::now()))
                    .collect()
            }
        };
        match runner.run_blocking(joined, &requested, started, n) {
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
                .map(|inputs| alone(inputs, Instant::now()))
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
/// the same in every request: they share a [`BatchKey`]), decoding raw bytes straight
/// into the joined tensor: one copy.
fn join_inputs(
    per_request: Vec<Vec<Input>>,
) -> Result<Vec<NamedTensor>, localml_proto::tensor::TensorError> {
    let Some(first) = per_request.first() else {
        return Ok(Vec::new());
    };
    let mut joined: Vec<NamedTensor> = Vec::with_capacity(first.len());
    for (i, input) in first.iter().enumerate() {
        let rows: i64 = per_request
            .iter()
            .filter_map(|inputs| inputs.get(i).and_then(|t| t.shape.first()))
            .sum();
        let mut shape = input.shape.clone();
        shape[0] = rows;
        let elements = localml_proto::tensor::element_count(&shape)?;
        joined.push(NamedTensor {
            name: input.name.clone(),
            data: TensorData::with_capacity(input.datatype, elements),
            shape,
        });
    }
    for inputs in per_request {
        for (into, from) in joined.iter_mut().zip(inputs) {
            match from.data {
                InputData::Raw(raw) => into.data.extend_from_raw(&raw)?,
                InputData::Decoded(data) => {
                    into.data.append(data);
                }
            }
        }
    }
    Ok(joined)
}

/// Splits each output along the first dimension into `sizes` rows per request: slices of
/// the one buffer, no copy.
fn split_outputs(outputs: Vec<Output>, sizes: &[usize]) -> Result<Vec<Vec<Output>>, String> {
    let total: usize = sizes.iter().sum();
    let mut per_request: Vec<Vec<Output>> = sizes.iter().map(|_| Vec::new()).collect();
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
        // Where a row starts in the raw content: by element size, or for BYTES (elements
        // of any length) by walking their length prefixes.
        let size = out.datatype.element_size();
        let boundaries = match size {
            Some(_) => Vec::new(),
            None => localml_proto::tensor::bytes_boundaries(&out.raw)
                .map_err(|e| format!("output '{}': {e}", out.name))?,
        };
        let offset = |rows: usize| -> Result<usize, String> {
            match size {
                Some(size) => Ok(rows * row * size),
                None => boundaries.get(rows * row).copied().ok_or_else(|| {
                    format!("output '{}' has fewer elements than its shape", out.name)
                }),
            }
        };
        if offset(total)? != out.raw.len() {
            return Err(format!(
                "output '{}' has {} bytes, not what its shape {:?} needs",
                out.name,
                out.raw.len(),
                out.shape
            ));
        }
        let mut start = 0;
        for (&n, target) in sizes.iter().zip(per_request.iter_mut()) {
            let from = offset(start)?;
            start += n;
            let to = offset(start)?;
            let mut shape = out.shape.clone();
            shape[0] = i64::try_from(n).unwrap_or(i64::MAX);
            target.push(Output {
                name: out.name.clone(),
                shape,
                datatype: out.datatype,
                raw: out.raw.slice(from..to),
            });
        }
    }
    Ok(per_request)
}

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

    /// An input as a request carries it: raw little-endian bytes.
    fn raw_input(name: &str, shape: &[i64], values: &[f32]) -> Input {
        Input {
            name: name.into(),
            shape: shape.to_vec(),
            datatype: DataType::Fp32,
            data: InputData::Raw(TensorData::Fp32(values.to_vec()).to_raw().into()),
        }
    }

    fn output(name: &str, shape: &[i64], data: TensorData) -> Output {
        Output {
            name: name.into(),
            shape: shape.to_vec(),
            datatype: data.datatype(),
            raw: data.to_raw().into(),
        }
    }

    #[test]
    fn joins_and_splits_along_the_batch_dimension() {
        let joined = join_inputs(vec![
            vec![raw_input("x", &[1, 2], &[1.0, 2.0])],
            vec![tensor("x", &[2, 2], &[3.0, 4.0, 5.0, 6.0]).into()],
            vec![raw_input("x", &[1, 2], &[7.0, 8.0])],
        ])
        .expect("join");
        assert_eq!(
            joined,
            vec![tensor(
                "x",
                &[4, 2],
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
            )]
        );
        let out = output(
            "x",
            &[4, 2],
            TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
        );
        let split = split_outputs(vec![out], &[1, 2, 1]).expect("split");
        let fp32 = |v: &[f32]| TensorData::Fp32(v.to_vec());
        assert_eq!(split[0], vec![output("x", &[1, 2], fp32(&[1.0, 2.0]))]);
        assert_eq!(
            split[1],
            vec![output("x", &[2, 2], fp32(&[3.0, 4.0, 5.0, 6.0]))]
        );
        assert_eq!(split[2], vec![output("x", &[1, 2], fp32(&[7.0, 8.0]))]);
    }

    #[test]
    fn bytes_outputs_split_at_their_elements() {
        let element = |s: &str| s.as_bytes().to_vec();
        let out = output(
            "s",
            &[3, 2],
            TensorData::Bytes(vec![
                element("a"),
                element(""),
                element("ccc"),
                element("dd\0d"),
                element("e"),
                element("ffffff"),
            ]),
        );
        let split = split_outputs(vec![out], &[2, 1]).expect("split");
        assert_eq!(
            split[0],
            vec![output(
                "s",
                &[2, 2],
                TensorData::Bytes(vec![
                    element("a"),
                    element(""),
                    element("ccc"),
                    element("dd\0d")
                ])
            )]
        );
        assert_eq!(
            split[1],
            vec![output(
                "s",
                &[1, 2],
                TensorData::Bytes(vec![element("e"), element("ffffff")])
            )]
        );
        // Fewer elements than the shape says.
        let short = output("s", &[3, 2], TensorData::Bytes(vec![element("a")]));
        assert!(split_outputs(vec![short], &[2, 1]).is_err());
    }

    #[test]
    fn an_output_without_the_batch_rows_is_an_error() {
        let out = vec![output("y", &[2], TensorData::Fp32(vec![1.0, 2.0]))];
        let err = split_outputs(out, &[1, 2]).expect_err("2 rows for 3");
        assert!(err.contains("'y' has 2 rows for a batch of 3"), "{err}");
        let short = vec![output("y", &[3], TensorData::Fp32(vec![1.0, 2.0]))];
        let err = split_outputs(short, &[1, 2]).expect_err("8 bytes for 3 rows");
        assert!(err.contains("'y' has 8 bytes"), "{err}");
    }

    fn pending(shape: &[i64], requested: &[&str], priority: i64) -> Pending {
        Pending::new(
            vec![tensor(
                "x",
                shape,
                &vec![0.0; shape.iter().product::<i64>() as usize],
            )
            .into()],
            requested.iter().map(|s| s.to_string()).collect(),
            priority,
        )
        .map(|(p, _)| p)
        .expect("batchable")
    }

    #[test]
    fn requests_join_only_with_the_same_inner_shape_and_outputs() {
        let key = |shape: &[i64], requested: &[&str]| pending(shape, requested, 0).key;
        assert_eq!(key(&[1, 3], &[]), key(&[4, 3], &[]));
        assert_ne!(key(&[1, 3], &[]), key(&[1, 4], &[]));
        assert_ne!(key(&[1, 3], &["y"]), key(&[1, 3], &[]));
        // Inputs that disagree on the batch size run alone.
        let mixed = Pending::new(
            vec![
                tensor("a", &[1, 1], &[0.0]).into(),
                tensor("b", &[2, 1], &[0.0, 0.0]).into(),
            ],
            Vec::new(),
            0,
        );
        assert!(mixed.is_err());
    }

    #[test]
    fn the_highest_priority_goes_first_then_the_oldest() {
        let waiting: VecDeque<Pending> = [
            pending(&[1, 3], &[], 0),
            pending(&[1, 3], &[], 5),
            pending(&[1, 4], &[], 9),
            pending(&[2, 3], &[], 5),
        ]
        .into_iter()
        .collect();
        assert_eq!(first(&waiting, |_| true), Some(2));
        // Among those that fit a batch of [_, 3]: priority 5, the older of the two.
        let key = waiting[0].key.clone();
        assert_eq!(first(&waiting, |p| p.key == key), Some(1));
        assert_eq!(first(&waiting, |p| p.key == key && p.priority < 5), Some(0));
        assert_eq!(first(&waiting, |_| false), None);
    }
}
