//! Named plugin factories. A factory builds a plugin from its YAML arguments and says
//! which extension points it implements. Names are constants; duplicates are rejected.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::contracts::*;

/// A built plugin: the extension points it implements.
#[derive(Default, Clone)]
pub struct Built {
    pub pre_filter: Option<Arc<dyn PreFilter>>,
    pub filter: Option<Arc<dyn Filter>>,
    pub post_filter: Option<Arc<dyn PostFilter>>,
    pub pre_score: Option<Arc<dyn PreScore>>,
    pub score: Option<Arc<dyn Score>>,
    pub reserve: Option<Arc<dyn Reserve>>,
    pub permit: Option<Arc<dyn Permit>>,
}

impl Built {
    /// A plugin with only a Filter.
    pub fn filter<P: Filter + 'static>(plugin: P) -> Built {
        Built {
            filter: Some(Arc::new(plugin)),
            ..Default::default()
        }
    }

    /// A plugin with only a Score.
    pub fn score<P: Score + 'static>(plugin: P) -> Built {
        Built {
            score: Some(Arc::new(plugin)),
            ..Default::default()
        }
    }

    /// A plugin that filters and scores.
    pub fn filter_and_score<P: Filter + Score + 'static>(plugin: P) -> Built {
        let plugin = Arc::new(plugin);
        Built {
            filter: Some(plugin.clone()),
            score: Some(plugin),
            ..Default::default()
        }
    }
}

/// Builds a plugin from its `args` (YAML; `Null` when none are given).
pub type Factory = fn(&serde_yaml::Value) -> Result<Built, String>;

#[derive(Default)]
pub struct Registry {
    factories: BTreeMap<&'static str, Factory>,
}

impl Registry {
    pub fn register(&mut self, name: &'static str, factory: Factory) -> Result<(), String> {
        if self.factories.insert(name, factory).is_some() {
            return Err(format!("plugin '{name}' is registered twice"));
        }
        Ok(())
    }

    pub fn build(&self, name: &str, args: &serde_yaml::Value) -> Result<Built, String> {
        let factory = self.factories.get(name).ok_or_else(|| {
            format!(
                "unknown plugin '{name}' (known: {})",
                self.factories
                    .keys()
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        factory(args)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.factories.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing(_: &serde_yaml::Value) -> Result<Built, String> {
        Ok(Built::default())
    }

    #[test]
    fn duplicates_and_unknown_names_are_errors() {
        let mut r = Registry::default();
        r.register("A", nothing).expect("first");
        assert!(r
            .register("A", nothing)
            .expect_err("duplicate")
            .contains("twice"));
        assert!(r
            .build("B", &serde_yaml::Value::Null)
            .err()
            .is_some_and(|e| e.contains("known: A")));
        assert!(r.build("A", &serde_yaml::Value::Null).is_ok());
    }
}
