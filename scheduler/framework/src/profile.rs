//! Scheduling profiles from the scheduler's YAML config, in the spirit of
//! KubeSchedulerConfiguration: which plugins are enabled, their weights and arguments.
//! A request picks one with the `localml.profile` parameter.
//!
//! ```yaml
//! profiles:
//!   - name: default
//!     plugins:
//!       - {name: NodeUnschedulable}
//!       - {name: PowerState, weight: 2, args: {critical_battery_percent: 20}}
//!       - {name: LeastExpectedLatency, weight: 6}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::plugins;
use crate::registry::PluginError;
use crate::runtime::Profile;

/// The profile used when a request names none.
pub const DEFAULT_PROFILE: &str = "default";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    /// Weight of the plugin's score (if it scores); default 1.
    #[serde(default = "one")]
    pub weight: i64,
    #[serde(default)]
    pub args: serde_yaml::Value,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    pub name: String,
    pub plugins: Vec<PluginConfig>,
    /// Stop filtering once this many workers fit (0: all); see docs/scheduling.md.
    #[serde(default = "default_max_feasible")]
    pub max_feasible_workers: usize,
}

/// Enough choices for good placement, few enough for a decision in about a microsecond on
/// any cluster size (PowerState's battery PreFilter adds a scan of the snapshot while a
/// worker is on battery; docs/benchmarks.md). In `localml-sim` (1,000 workers, 95% load) 16 gave a p99 within 6% of
/// 32's (112.5 vs 106.1 ms); see docs/benchmarks.md.
pub const DEFAULT_MAX_FEASIBLE: usize = 16;

fn default_max_feasible() -> usize {
    DEFAULT_MAX_FEASIBLE
}

fn plugin(name: &str, weight: i64) -> PluginConfig {
    PluginConfig {
        name: name.to_string(),
        weight,
        args: serde_yaml::Value::Null,
    }
}

/// How long a request may expect to wait for a worker off battery before a worker on
/// battery takes it, in the shipped `default` and `energy-saver` profiles: about a
/// tenth of a small model's latency on an office PC, so a battery PC helps under real
/// overload and rests otherwise.
pub const BATTERY_WAIT_BUDGET_MS: f64 = 50.0;

/// The shipped profiles: `default` (latency first, battery as overflow capacity),
/// `energy-saver` (mains power first, then the fewest joules per inference among the
/// workers that start the request within the wait budget; battery as overflow) and
/// `latency` (speed first: battery workers compete on score, as before battery became
/// overflow capacity).
pub fn builtin() -> Vec<ProfileConfig> {
    use plugins::*;
    let filters = || {
        vec![
            plugin(node_unschedulable::NAME, 1),
            plugin(labels::NAME, 1),
            plugin(model_available::NAME, 1),
        ]
    };
    let power = |weight: i64, overflow: bool| {
        let mut p = plugin(power_state::NAME, weight);
        if overflow {
            let mut args = serde_yaml::Mapping::new();
            args.insert(
                "battery_wait_budget_ms".into(),
                BATTERY_WAIT_BUDGET_MS.into(),
            );
            p.args = serde_yaml::Value::Mapping(args);
        }
        p
    };
    // The shipped profiles differ only in weights, in whether battery is overflow, and
    // in whether energy per inference scores (weight 0: LeastEnergy is left out).
    let weighted = |provider: i64, power_weight: i64, latency: i64, energy: i64, overflow: bool| {
        let mut plugins = filters();
        plugins.extend([
            plugin(execution_provider::NAME, provider),
            plugin(memory_fit::NAME, 1),
            power(power_weight, overflow),
            plugin(least_expected_latency::NAME, latency),
        ]);
        if energy > 0 {
            plugins.push(plugin(least_energy::NAME, energy));
        }
        // Last among the filters: a worker it rejects passed all the others.
        plugins.push(plugin(capacity::NAME, 1));
        plugins
    };
    let profile = |name: &str, plugins: Vec<PluginConfig>| ProfileConfig {
        name: name.into(),
        plugins,
        max_feasible_workers: DEFAULT_MAX_FEASIBLE,
    };
    vec![
        profile(DEFAULT_PROFILE, weighted(1, 3, 6, 0, true)),
        profile("energy-saver", weighted(3, 4, 5, 5, true)),
        profile("latency", weighted(1, 3, 6, 0, false)),
    ]
}

/// What is wrong with the configured profiles; each message names the field, e.g.
/// `profiles[0].plugins[2].args: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// A negative score weight.
    #[error("{at}.weight: must be >= 0, got {weight}")]
    Weight { at: String, weight: i64 },
    /// A plugin that does not exist (`.name`) or whose arguments are wrong (`.args`).
    #[error("{at}.{}: {source}", if matches!(.source, PluginError::Unknown { .. }) { "name" } else { "args" })]
    Plugin { at: String, source: PluginError },
    /// Two profiles with one name.
    #[error("profiles[{index}].name: '{name}' is defined twice")]
    Duplicate { index: usize, name: String },
    /// No profile named `default`, which requests without `localml.profile` use.
    #[error("profiles: a profile named '{}' is required", DEFAULT_PROFILE)]
    NoDefault,
}

/// Built profiles by name.
#[derive(Clone)]
pub struct Profiles {
    by_name: BTreeMap<String, Arc<Profile>>,
}

impl Profiles {
    /// Builds `configs`; errors name the field, e.g. `profiles[0].plugins[2].args: ...`.
    pub fn build(configs: &[ProfileConfig]) -> Result<Profiles, ProfileError> {
        let registry = plugins::registry();
        let mut by_name = BTreeMap::new();
        for (i, config) in configs.iter().enumerate() {
            let mut profile = Profile {
                name: config.name.clone(),
                max_feasible: config.max_feasible_workers,
                ..Default::default()
            };
            for (j, p) in config.plugins.iter().enumerate() {
                let at = format!("profiles[{i}].plugins[{j}]");
                if p.weight < 0 {
                    return Err(ProfileError::Weight {
                        at,
                        weight: p.weight,
                    });
                }
                let built = registry
                    .build(&p.name, &p.args)
                    .map_err(|source| ProfileError::Plugin { at, source })?;
                profile.pre_filters.extend(built.pre_filter);
                profile.filters.extend(built.filter);
                profile.post_filters.extend(built.post_filter);
                profile.pre_scores.extend(built.pre_score);
                profile.scores.extend(built.score.map(|s| (s, p.weight)));
                profile.reserves.extend(built.reserve);
            }
            // Liveness, NotReady, cordons and draining hold whatever a profile lists: a
            // profile that leaves NodeUnschedulable out still gets it, first.
            if !profile
                .filters
                .iter()
                .any(|f| f.name() == plugins::node_unschedulable::NAME)
            {
                profile.filters.insert(
                    0,
                    std::sync::Arc::new(plugins::node_unschedulable::NodeUnschedulable),
                );
            }
            if by_name
                .insert(config.name.clone(), Arc::new(profile))
                .is_some()
            {
                return Err(ProfileError::Duplicate {
                    index: i,
                    name: config.name.clone(),
                });
            }
        }
        if !by_name.contains_key(DEFAULT_PROFILE) {
            return Err(ProfileError::NoDefault);
        }
        Ok(Profiles { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.by_name.get(if name.is_empty() {
            DEFAULT_PROFILE
        } else {
            name
        })
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Vec<ProfileConfig> {
        serde_yaml::from_str(yaml).expect("yaml")
    }

    #[test]
    fn every_profile_keeps_notready_and_cordoned_workers_out_whatever_it_lists() {
        let p = Profiles::build(&parse(
            "- name: default\n  plugins:\n    - {name: LeastExpectedLatency, weight: 1}\n",
        ))
        .expect("valid");
        let names: Vec<&str> = p
            .get("")
            .expect("default")
            .filters
            .iter()
            .map(|f| f.name())
            .collect();
        assert_eq!(names, ["NodeUnschedulable"]);
        // Listed once, it is not added twice.
        let p = Profiles::build(&parse(
            "- name: default\n  plugins:\n    - {name: NodeUnschedulable}\n",
        ))
        .expect("valid");
        assert_eq!(p.get("").expect("default").filters.len(), 1);
    }

    #[test]
    fn builtin_profiles_build() {
        let p = Profiles::build(&builtin()).expect("builtin profiles are valid");
        assert_eq!(p.names(), vec!["default", "energy-saver", "latency"]);
        let default = p.get("").expect("default");
        assert_eq!(default.filters.len(), 7);
        assert_eq!(default.scores.len(), 4);
        let scores = |name: &str| -> Vec<(&'static str, i64)> {
            p.get(name)
                .expect(name)
                .scores
                .iter()
                .map(|(s, w)| (s.name(), *w))
                .collect()
        };
        assert!(
            scores("energy-saver").contains(&(plugins::least_energy::NAME, 5)),
            "energy-saver scores joules per inference: {:?}",
            scores("energy-saver")
        );
        for name in ["default", "latency"] {
            assert!(
                scores(name)
                    .iter()
                    .all(|(n, _)| *n != plugins::least_energy::NAME),
                "{name} leaves energy out"
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "- {name: default, plugins: [{name: Nope}]}",
                "profiles[0].plugins[0].name: unknown plugin 'Nope'",
            ),
            (
                "- {name: default, plugins: [{name: PowerState, args: {critical: 3}}]}",
                "profiles[0].plugins[0].args: ",
            ),
            (
                "- {name: default, plugins: [{name: Labels, weight: -1}]}",
                "profiles[0].plugins[0].weight",
            ),
            (
                "- {name: other, plugins: []}",
                "a profile named 'default' is required",
            ),
            (
                "- {name: default, plugins: []}\n- {name: default, plugins: []}",
                "profiles[1].name",
            ),
        ];
        for (yaml, expected) in cases {
            let err = Profiles::build(&parse(yaml))
                .err()
                .expect("invalid")
                .to_string();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }
}
