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

/// Why a plugin could not be registered or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// Two factories under one name (a programming error; the registry refuses it).
    #[error("plugin '{0}' is registered twice")]
    Duplicate(&'static str),
    /// A profile names a plugin no factory provides.
    #[error("unknown plugin '{name}' (known: {known})")]
    Unknown { name: String, known: String },
    /// The plugin's `args` do not parse or hold an impossible value (the message says
    /// which key and why).
    #[error("{0}")]
    Args(String),
}

/// Builds a plugin from its `args` (YAML; `Null` when none are given).
pub type Factory = fn(&serde_yaml::Value) -> Result<Built, PluginError>;

#[derive(Default)]
pub struct Registry {
    factories: BTreeMap<&'static str, Factory>,
}

impl Registry {
    pub fn register(&mut self, name: &'static str, factory: Factory) -> Result<(), PluginError> {
        if self.factories.insert(name, factory).is_some() {
            return Err(PluginError::Duplicate(name));
        }
        Ok(())
    }

    pub fn build(&self, name: &str, args: &serde_yaml::Value) -> Result<Built, PluginError> {
        let factory = self
            .factories
            .get(name)
            .ok_or_else(|| PluginError::Unknown {
                name: name.to_string(),
                known: self.names().join(", "),
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

    fn nothing(_: &serde_yaml::Value) -> Result<Built, PluginError> {
        Ok(Built::default())
    }

    #[test]
    fn duplicates_and_unknown_names_are_errors() {
        let mut r = Registry::default();
        r.register("A", nothing).expect("first");
        assert!(r
            .register("A", nothing)
            .expect_err("duplicate")
            .to_string()
            .contains("twice"));
        assert!(r
            .build("B", &serde_yaml::Value::Null)
            .err()
            .is_some_and(|e| e.to_string().contains("known: A")));
        assert!(r.build("A", &serde_yaml::Value::Null).is_ok());
    }
}
