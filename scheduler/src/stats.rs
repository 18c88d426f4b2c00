//! Per-model request counters as the scheduler sees them (ModelStatistics).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use localml_proto::inference::{InferStatistics, ModelStatistics, StatisticDuration};

/// The model label of requests for models the cluster does not have.
pub const UNKNOWN_MODEL: &str = "<unknown>";

/// Whether a request named a model and version the cluster has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Known,
    UnknownModel,
    UnknownVersion,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    success: u64,
    success_ns: u64,
    /// Of the successful requests' time, how much they waited in the scheduler (queue,
    /// scheduling cycle) before leaving for the worker that answered.
    queue_ns: u64,
    fail: u64,
    fail_ns: u64,
    last_ms: u64,
}

/// How long one request took in the scheduler, and how much of that before it left for
/// the worker (Triton's queue time; the rest is the worker's, Triton's compute time).
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub total: Duration,
    pub queued: Duration,
}

#[derive(Default)]
pub struct Stats {
    /// Model name, then requested version; nested so recording allocates no key.
    by_model: Mutex<HashMap<String, HashMap<String, Counters>>>,
    /// Prometheus series per model: requests by status code, and latency.
    series: Mutex<HashMap<String, Series>>,
}

#[derive(Default)]
pub struct Series {
    pub codes: HashMap<&'static str, u64>,
    pub latency: std::sync::Arc<localml_serving::metrics::Histogram>,
}

impl Stats {
    /// Per model: requests by code and the latency histogram (copied out).
    pub fn series(
        &self,
    ) -> Vec<(
        String,
        HashMap<&'static str, u64>,
        std::sync::Arc<localml_serving::metrics::Histogram>,
    )> {
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .map(|(m, s)| {
                (
                    m.clone(),
                    s.codes.clone(),
                    std::sync::Arc::clone(&s.latency),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Counts one request to `model`/`version` (the version that served it, or would
    /// have: never "" for a model the cluster has). Requests for a model the cluster does not
    /// have count under the model label [`UNKNOWN_MODEL`] in the metric series only, and
    /// those for an unknown version only in the model's series: the per-version statistics
    /// hold what exists, whatever names clients send.
    pub fn record(&self, model: &str, version: &str, seen: Seen, code: tonic::Code, times: Times) {
        let elapsed = times.total;
        let ok = code == tonic::Code::Ok;
        let model = match seen {
            Seen::UnknownModel => UNKNOWN_MODEL,
            _ => model,
        };
        {
            let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
            if !series.contains_key(model) {
                series.insert(model.to_string(), Series::default());
            }
            if let Some(s) = series.get_mut(model) {
                *s.codes
                    .entry(localml_serving::metrics::code_label(code))
                    .or_default() += 1;
                if ok {
                    s.latency.observe(elapsed.as_secs_f64());
                }
            }
        }
        if seen != Seen::Known {
            return;
        }
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let now_ms = localml_proto::time::unix_ms();
        let mut map = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(model) {
            map.insert(model.to_string(), HashMap::new());
        }
        let Some(versions) = map.get_mut(model) else {
            return;
        };
        if !versions.contains_key(version) {
            versions.insert(version.to_string(), Counters::default());
        }
        let Some(c) = versions.get_mut(version) else {
            return;
        };
        if ok {
            c.success += 1;
            c.success_ns = c.success_ns.saturating_add(ns);
            let queued = u64::try_from(times.queued.as_nanos()).unwrap_or(u64::MAX);
            c.queue_ns = c.queue_ns.saturating_add(queued.min(ns));
        } else {
            c.fail += 1;
            c.fail_ns = c.fail_ns.saturating_add(ns);
        }
        c.last_ms = now_ms;
    }

    /// Statistics for `model` (all models when empty) and `version` (all versions when
    /// empty), one entry per version that served, as Triton reports them: every version
    /// in `existing` (the cluster's model versions) has an entry, with zero counts until
    /// it serves, so a client that reads statistics before and after a run (Triton's
    /// perf_analyzer) finds the version at both ends.
    pub fn snapshot(
        &self,
        model: &str,
        version: &str,
        existing: &[(String, String)],
    ) -> Vec<ModelStatistics> {
        let map = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = |m: &str, v: &str| {
            (model.is_empty() || m == model) && (version.is_empty() || v == version)
        };
        let mut all: std::collections::BTreeMap<(&str, &str), Counters> = Default::default();
        for (m, v) in existing {
            all.insert((m.as_str(), v.as_str()), Counters::default());
        }
        for (m, versions) in map.iter() {
            for (v, c) in versions {
                all.insert((m.as_str(), v.as_str()), *c);
            }
        }
        all.into_iter()
            .filter(|((m, v), _)| wanted(m, v))
            .map(|((m, v), c)| ModelStatistics {
                name: m.to_string(),
                version: v.to_string(),
                last_inference: c.last_ms,
                inference_count: c.success,
                execution_count: c.success,
                inference_stats: Some(InferStatistics {
                    success: Some(StatisticDuration {
                        count: c.success,
                        ns: c.success_ns,
                    }),
                    fail: Some(StatisticDuration {
                        count: c.fail,
                        ns: c.fail_ns,
                    }),
                    // Triton's split of a successful request's time, which
                    // perf_analyzer reads: waiting in the scheduler (queue), then at
                    // the worker (compute_infer; the scheduler converts no tensors, so
                    // compute_input and compute_output take no time here).
                    queue: Some(StatisticDuration {
                        count: c.success,
                        ns: c.queue_ns,
                    }),
                    compute_input: Some(StatisticDuration {
                        count: c.success,
                        ns: 0,
                    }),
                    compute_infer: Some(StatisticDuration {
                        count: c.success,
                        ns: c.success_ns.saturating_sub(c.queue_ns),
                    }),
                    compute_output: Some(StatisticDuration {
                        count: c.success,
                        ns: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ms` in all, half of it queued.
    fn times(ms: u64) -> Times {
        Times {
            total: Duration::from_millis(ms),
            queued: Duration::from_millis(ms) / 2,
        }
    }

    #[test]
    fn counts_success_and_failure() {
        let s = Stats::default();
        s.record("m", "", Seen::Known, tonic::Code::Ok, times(2));
        s.record("m", "", Seen::Known, tonic::Code::NotFound, times(1));
        s.record("n", "1", Seen::Known, tonic::Code::Ok, times(1));
        let series = s.series();
        assert_eq!(series[0].0, "m");
        assert_eq!(series[0].1.get("OK"), Some(&1));
        assert_eq!(series[0].1.get("NOT_FOUND"), Some(&1));
        assert_eq!(series[0].2.count(), 1);
        let m = &s.snapshot("m", "", &[])[0];
        let st = m.inference_stats.as_ref().expect("stats");
        assert_eq!(
            st.success.as_ref().map(|d| (d.count, d.ns)),
            Some((1, 2_000_000))
        );
        assert_eq!(st.fail.as_ref().map(|d| d.count), Some(1));
        assert_eq!(
            st.queue.as_ref().map(|d| (d.count, d.ns)),
            Some((1, 1_000_000))
        );
        assert_eq!(
            st.compute_infer.as_ref().map(|d| (d.count, d.ns)),
            Some((1, 1_000_000))
        );
        assert_eq!(s.snapshot("", "", &[]).len(), 2);
    }

    #[test]
    fn every_existing_version_has_an_entry() {
        let s = Stats::default();
        s.record("m", "2", Seen::Known, tonic::Code::Ok, times(1));
        let existing = [
            ("m".to_string(), "1".to_string()),
            ("m".to_string(), "2".to_string()),
            ("n".to_string(), "1".to_string()),
        ];
        let got: Vec<(String, String, u64)> = s
            .snapshot("m", "", &existing)
            .into_iter()
            .map(|m| (m.name, m.version, m.inference_count))
            .collect();
        assert_eq!(
            got,
            [
                ("m".to_string(), "1".to_string(), 0),
                ("m".to_string(), "2".to_string(), 1)
            ]
        );
        let one = s.snapshot("m", "2", &existing);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].inference_count, 1);
        assert_eq!(s.snapshot("", "", &existing).len(), 3);
    }
}
