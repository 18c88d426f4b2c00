//! Per-model request counters as the scheduler sees them (ModelStatistics).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use localml_proto::inference::{InferStatistics, ModelStatistics, StatisticDuration};

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    success: u64,
    success_ns: u64,
    fail: u64,
    fail_ns: u64,
    last_ms: u64,
}

#[derive(Default)]
pub struct Stats {
    /// Model name, then requested version; nested so recording allocates no key.
    by_model: Mutex<HashMap<String, HashMap<String, Counters>>>,
}

impl Stats {
    pub fn record(&self, model: &str, version: &str, ok: bool, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
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
            c.success_ns += ns;
        } else {
            c.fail += 1;
            c.fail_ns += ns;
        }
        c.last_ms = now_ms;
    }

    /// Statistics for `model` (all models when empty); the version is what clients asked
    /// for ("" when they let the scheduler choose).
    pub fn snapshot(&self, model: &str) -> Vec<ModelStatistics> {
        let map = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ModelStatistics> = map
            .iter()
            .filter(|(m, _)| model.is_empty() || m.as_str() == model)
            .flat_map(|(m, versions)| versions.iter().map(move |(v, c)| (m, v, c)))
            .map(|(m, v, c)| ModelStatistics {
                name: m.clone(),
                version: v.clone(),
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
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_success_and_failure() {
        let s = Stats::default();
        s.record("m", "", true, Duration::from_millis(2));
        s.record("m", "", false, Duration::from_millis(1));
        s.record("n", "1", true, Duration::from_millis(1));
        let m = &s.snapshot("m")[0];
        let st = m.inference_stats.as_ref().expect("stats");
        assert_eq!(
            st.success.as_ref().map(|d| (d.count, d.ns)),
            Some((1, 2_000_000))
        );
        assert_eq!(st.fail.as_ref().map(|d| d.count), Some(1));
        assert_eq!(s.snapshot("").len(), 2);
    }
}
