//! A profile: the plugins enabled at each extension point, with score weights, and the
//! synchronous scheduling cycle over a snapshot. Binding (dispatch) is the caller's, so it
//! can run concurrently; on a failed bind the caller calls [`Profile::unreserve`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::contracts::*;

/// The plugins of one profile, per extension point, in order.
#[derive(Default, Clone)]
pub struct Profile {
    pub name: String,
    pub pre_filters: Vec<Arc<dyn PreFilter>>,
    pub filters: Vec<Arc<dyn Filter>>,
    pub post_filters: Vec<Arc<dyn PostFilter>>,
    pub pre_scores: Vec<Arc<dyn PreScore>>,
    /// Score plugins with their weights.
    pub scores: Vec<(Arc<dyn Score>, i64)>,
    pub reserves: Vec<Arc<dyn Reserve>>,
    /// Stop filtering once this many workers fit (0: consider all), starting from a
    /// rotating offset, like kube-scheduler's percentageOfNodesToScore: on a large
    /// cluster a decision then costs the same as on a small one.
    pub max_feasible: usize,
}

/// The name rejections of already-tried workers carry.
pub const EXCLUDED: &str = "Dispatch";

/// The outcome of a successful cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Index of the chosen worker in the snapshot.
    pub worker: usize,
    /// Weighted total score of the chosen worker.
    pub score: i64,
}

/// Why no worker was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Unschedulable (retry later may succeed) or UnschedulableAndUnresolvable, or Error.
    pub code: Code,
    /// The plugins that rejected workers (distinct names).
    pub rejected_by: Vec<&'static str>,
    /// "0/3 workers are available: 2 PowerState: battery 12% is under 15%, ..."
    pub message: String,
}

fn with_plugin(mut status: Status, plugin: &'static str) -> Status {
    status.plugin = plugin;
    status
}

impl Profile {
    /// Runs PreFilter, Filter (PostFilter when nothing fits), PreScore, Score with
    /// NormalizeScore, selection and Reserve. `excluded` workers (already tried for
    /// this request) are skipped; `tie_breaker` rotates among equal scores.
    pub fn schedule(
        &self,
        state: &mut CycleState,
        request: &RequestInfo,
        snapshot: &Snapshot,
        excluded: &[usize],
        tie_breaker: usize,
    ) -> Result<Decision, Rejection> {
        state.now_ms = snapshot.now_ms;
        let mut skipped: Vec<&'static str> = Vec::new();
        for p in &self.pre_filters {
            let status = p.pre_filter(state, request, snapshot);
            match status.code {
                Code::Success => {}
                Code::Skip => skipped.push(p.name()),
                code => return Err(early(code, p.name(), &status.reason)),
            }
        }
        let limit = if self.max_feasible == 0 {
            usize::MAX
        } else {
            self.max_feasible
        };
        let filter_all = |state: &CycleState| {
            self.filter_all(
                state,
                request,
                snapshot,
                excluded,
                &skipped,
                tie_breaker,
                limit,
            )
        };
        let (mut feasible, mut rejected) = filter_all(state);
        if feasible.is_empty() {
            let mut again = false;
            for p in &self.post_filters {
                again |= p.post_filter(state, request, &rejected).is_success();
            }
            if again {
                (feasible, rejected) = filter_all(state);
            }
            if feasible.is_empty() {
                return Err(rejection(snapshot.workers.len(), &rejected));
            }
        }
        for p in &self.pre_scores {
            if skipped.contains(&p.name()) {
                continue;
            }
            let status = p.pre_score(state, request, &feasible);
            if status.code == Code::Error {
                return Err(early(Code::Error, p.name(), &status.reason));
            }
        }
        let mut totals = vec![0i64; feasible.len()];
        let mut raw = vec![0i64; feasible.len()];
        for (plugin, weight) in &self.scores {
            if skipped.contains(&plugin.name()) || *weight == 0 {
                continue;
            }
            for (r, w) in raw.iter_mut().zip(&feasible) {
                *r = plugin.score(state, request, w);
            }
            plugin.normalize(state, &mut raw);
            for (t, r) in totals.iter_mut().zip(&raw) {
                *t += weight * (*r).clamp(0, MAX_SCORE);
            }
        }
        let n = feasible.len();
        // Highest total; among equals the first found, and the scan started at an offset
        // rotated by `tie_breaker`, so equal workers take turns.
        let mut best = 0;
        for i in 1..n {
            if totals[i] > totals[best] {
                best = i;
            }
        }
        let chosen = feasible[best];
        tracing::trace!(?totals, names = ?feasible.iter().map(|w| &w.name).collect::<Vec<_>>(), "scores");
        for (i, r) in self.reserves.iter().enumerate() {
            let status = r.reserve(state, request, chosen);
            if !status.is_success() {
                for undo in self.reserves[..i].iter().rev() {
                    undo.unreserve(state, request, chosen);
                }
                return Err(early(status.code, r.name(), &status.reason));
            }
        }
        Ok(Decision {
            worker: chosen.index,
            score: totals[best],
        })
    }

    /// The Filter phase: the feasible workers (at most `limit`, scanning from a rotating
    /// offset) and why the others were rejected.
    #[allow(clippy::too_many_arguments)]
    fn filter_all<'s>(
        &self,
        state: &CycleState,
        request: &RequestInfo,
        snapshot: &'s Snapshot,
        excluded: &[usize],
        skipped: &[&'static str],
        tie_breaker: usize,
        limit: usize,
    ) -> (Vec<&'s WorkerInfo>, Vec<(usize, Status)>) {
        let total = snapshot.workers.len();
        let mut feasible: Vec<&WorkerInfo> = Vec::with_capacity(total.min(limit));
        let mut rejected: Vec<(usize, Status)> = Vec::new();
        let start = if total == 0 { 0 } else { tie_breaker % total };
        'workers: for k in 0..total {
            if feasible.len() >= limit {
                break;
            }
            let worker = &snapshot.workers[(start + k) % total];
            if excluded.contains(&worker.index) {
                rejected.push((
                    worker.index,
                    with_plugin(
                        Status::unschedulable("already tried for this request"),
                        EXCLUDED,
                    ),
                ));
                continue;
            }
            for f in &self.filters {
                if skipped.contains(&f.name()) {
                    continue;
                }
                let status = f.filter(state, request, worker);
                if !status.is_success() {
                    rejected.push((worker.index, with_plugin(status, f.name())));
                    continue 'workers;
                }
            }
            feasible.push(worker);
        }
        (feasible, rejected)
    }

    /// Undoes Reserve after a failed bind, in reverse order.
    pub fn unreserve(&self, state: &mut CycleState, request: &RequestInfo, worker: &WorkerInfo) {
        for r in self.reserves.iter().rev() {
            r.unreserve(state, request, worker);
        }
    }
}

/// kube-scheduler style summary: "0/3 workers are available: 2 PowerState: ..., 1 Labels: ...".
/// A rejection by one plugin before or after filtering.
fn early(code: Code, plugin: &'static str, reason: &str) -> Rejection {
    Rejection {
        code,
        rejected_by: vec![plugin],
        message: format!("{plugin}: {reason}"),
    }
}

fn rejection(total: usize, rejected: &[(usize, Status)]) -> Rejection {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut resolvable = false;
    let mut rejected_by: Vec<&'static str> = Vec::new();
    for (_, status) in rejected {
        if !rejected_by.contains(&status.plugin) {
            rejected_by.push(status.plugin);
        }
        *counts
            .entry((status.plugin.to_string(), status.reason.clone()))
            .or_default() += 1;
        resolvable |= status.code != Code::UnschedulableAndUnresolvable;
    }
    let parts: Vec<String> = counts
        .into_iter()
        .map(|((plugin, reason), n)| format!("{n} {plugin}: {reason}"))
        .collect();
    Rejection {
        code: if resolvable {
            Code::Unschedulable
        } else {
            Code::UnschedulableAndUnresolvable
        },
        rejected_by,
        message: format!("0/{total} workers are available: {}", parts.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Even;
    impl Plugin for Even {
        fn name(&self) -> &'static str {
            "Even"
        }
    }
    impl Filter for Even {
        fn filter(&self, _: &CycleState, _: &RequestInfo, w: &WorkerInfo) -> Status {
            if w.index.is_multiple_of(2) {
                Status::success()
            } else {
                Status::unresolvable("odd worker")
            }
        }
    }

    struct ByIndex;
    impl Plugin for ByIndex {
        fn name(&self) -> &'static str {
            "ByIndex"
        }
    }
    impl Score for ByIndex {
        fn score(&self, _: &CycleState, _: &RequestInfo, w: &WorkerInfo) -> i64 {
            w.index as i64
        }
        fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
            let max = scores.iter().copied().max().unwrap_or(0).max(1);
            for s in scores {
                *s = *s * MAX_SCORE / max;
            }
        }
    }

    fn snapshot(n: usize) -> Snapshot {
        Snapshot {
            workers: (0..n)
                .map(|index| WorkerInfo {
                    // No model and no RAM figures: the test plugins look at neither.
                    models: Vec::new(),
                    ram_total_bytes: 0,
                    ram_free_bytes: 0,
                    ..WorkerInfo::new(index, format!("w{index}"), ModelOnWorker::new("m", "1"))
                })
                .collect(),
            now_ms: 0,
            queued: 0,
        }
    }

    fn profile() -> Profile {
        Profile {
            name: "test".into(),
            filters: vec![Arc::new(Even)],
            scores: vec![(Arc::new(ByIndex), 2)],
            ..Default::default()
        }
    }

    #[test]
    fn filter_then_highest_weighted_score() {
        let d = profile()
            .schedule(
                &mut CycleState::default(),
                &RequestInfo::default(),
                &snapshot(5),
                &[],
                0,
            )
            .expect("a worker fits");
        assert_eq!(d.worker, 4);
        assert_eq!(d.score, 2 * MAX_SCORE);
        let d = profile()
            .schedule(
                &mut CycleState::default(),
                &RequestInfo::default(),
                &snapshot(5),
                &[4],
                0,
            )
            .expect("excluding the best leaves others");
        assert_eq!(d.worker, 2);
    }

    #[test]
    fn rejection_summarises_reasons_and_code() {
        let r = profile()
            .schedule(
                &mut CycleState::default(),
                &RequestInfo::default(),
                &snapshot(2),
                &[0],
                0,
            )
            .expect_err("nothing fits");
        assert_eq!(
            r.code,
            Code::Unschedulable,
            "the excluded worker may fit later"
        );
        assert!(
            r.message.starts_with("0/2 workers are available"),
            "{}",
            r.message
        );
        assert!(r.message.contains("1 Even: odd worker"), "{}", r.message);
        let one_odd = Snapshot {
            workers: snapshot(2).workers.split_off(1),
            now_ms: 0,
            queued: 0,
        };
        let r = profile()
            .schedule(
                &mut CycleState::default(),
                &RequestInfo::default(),
                &one_odd,
                &[],
                0,
            )
            .expect_err("nothing fits");
        assert_eq!(r.code, Code::UnschedulableAndUnresolvable);
    }

    #[test]
    fn ties_rotate() {
        let flat = Profile {
            name: "flat".into(),
            ..Default::default()
        };
        let picks: Vec<usize> = (0..3)
            .map(|t| {
                flat.schedule(
                    &mut CycleState::default(),
                    &RequestInfo::default(),
                    &snapshot(3),
                    &[],
                    t,
                )
                .expect("fits")
                .worker
            })
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
    }

    #[test]
    fn cycle_state_is_typed() {
        let mut s = CycleState::default();
        s.write(7u32);
        s.write(String::from("x"));
        assert_eq!(s.read::<u32>(), Some(&7));
        assert_eq!(s.read::<String>().map(String::as_str), Some("x"));
        assert_eq!(s.read::<i64>(), None);
    }
}
