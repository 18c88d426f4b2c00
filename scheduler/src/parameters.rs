//! The request parameters (OIP `parameters`) that steer scheduling, and the one that
//! names the worker in a response. Read once per request; errors name the parameter.

use localml_framework::{ProviderChoice, RequestInfo};
use std::collections::HashMap;

use localml_proto::inference::{InferParameter, ModelInferRequest};
pub use localml_proto::parameters::*;

/// A scheduling parameter a client set wrong (INVALID_ARGUMENT for the client).
#[derive(Debug, thiserror::Error)]
pub enum ParameterError {
    /// A parameter that must be a string has another type.
    #[error("parameter '{0}' must be a string")]
    NotAString(&'static str),
    /// `localml.provider` is not gpu, cpu or any.
    #[error("parameter '{name}' is '{0}'; expected gpu, cpu or any", name = PROVIDER_PARAMETER)]
    Provider(String),
    /// `localml.selector` has an item that is not `key=value`.
    #[error("parameter '{name}' has '{0}'; expected key=value pairs separated by commas", name = SELECTOR_PARAMETER)]
    Selector(String),
    /// `localml.priority` is a string that is not an integer.
    #[error("parameter '{name}' is '{0}'; expected an integer", name = PRIORITY_PARAMETER)]
    Priority(String),
    /// `localml.priority` is neither an integer nor a string.
    #[error("parameter '{}' must be an integer", PRIORITY_PARAMETER)]
    PriorityType,
    /// `localml.min_battery` is not a percentage.
    #[error("parameter '{name}' is '{0}'; expected a percentage from 0 to 100", name = MIN_BATTERY_PARAMETER)]
    MinBattery(String),
    /// `localml.power` is not any, prefer_mains or mains_only.
    #[error("parameter '{name}' is '{0}'; expected any, prefer_mains or mains_only", name = POWER_PARAMETER)]
    Power(String),
}

/// What a request's parameters are read from: a whole request, or the head the
/// scheduler decodes of one it forwards ([`crate::forward::RequestHead`]).
pub trait RequestParameters {
    fn model_name(&self) -> &str;
    fn parameters(&self) -> &HashMap<String, InferParameter>;
}

impl RequestParameters for ModelInferRequest {
    fn model_name(&self) -> &str {
        &self.model_name
    }
    fn parameters(&self) -> &HashMap<String, InferParameter> {
        &self.parameters
    }
}

impl RequestParameters for crate::forward::RequestHead {
    fn model_name(&self) -> &str {
        &self.model_name
    }
    fn parameters(&self) -> &HashMap<String, InferParameter> {
        &self.parameters
    }
}

fn string_parameter(
    request: &impl RequestParameters,
    key: &'static str,
) -> Result<Option<String>, ParameterError> {
    use localml_proto::inference::infer_parameter::ParameterChoice;
    match request
        .parameters()
        .get(key)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(None),
        Some(ParameterChoice::StringParam(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ParameterError::NotAString(key)),
    }
}

/// Reads the scheduling parameters of a request; errors name the parameter.
pub fn request_info(
    request: &impl RequestParameters,
    version: &str,
) -> Result<(String, RequestInfo), ParameterError> {
    use localml_proto::inference::infer_parameter::ParameterChoice;
    let profile = string_parameter(request, PROFILE_PARAMETER)?.unwrap_or_default();
    let provider = match string_parameter(request, PROVIDER_PARAMETER)?.as_deref() {
        None | Some("any") => ProviderChoice::Any,
        Some("gpu") => ProviderChoice::Gpu,
        Some("cpu") => ProviderChoice::Cpu,
        Some(other) => return Err(ParameterError::Provider(other.to_string())),
    };
    let mut selector = Vec::new();
    if let Some(text) = string_parameter(request, SELECTOR_PARAMETER)? {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
                return Err(ParameterError::Selector(pair.to_string()));
            };
            selector.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let priority = priority(request.parameters()).map_err(|e| match e {
        Some(text) => ParameterError::Priority(text),
        None => ParameterError::PriorityType,
    })?;
    let tenant = string_parameter(request, TENANT_PARAMETER)?.unwrap_or_default();
    let mains_only = match string_parameter(request, POWER_PARAMETER)?.as_deref() {
        None | Some("any") | Some("prefer_mains") => false,
        Some("mains_only") => true,
        Some(other) => return Err(ParameterError::Power(other.to_string())),
    };
    let min_battery_percent = match request
        .parameters()
        .get(MIN_BATTERY_PARAMETER)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => None,
        Some(choice) => {
            let (text, value) = match choice {
                ParameterChoice::DoubleParam(v) => (v.to_string(), Some(*v)),
                ParameterChoice::Int64Param(v) => (v.to_string(), Some(*v as f64)),
                ParameterChoice::StringParam(s) => (s.clone(), s.trim().parse::<f64>().ok()),
                other => (format!("{other:?}"), None),
            };
            match value {
                Some(v) if (0.0..=100.0).contains(&v) => Some(v as f32),
                _ => return Err(ParameterError::MinBattery(text)),
            }
        }
    };
    Ok((
        profile,
        RequestInfo {
            model: request.model_name().to_string(),
            version: version.to_string(),
            provider,
            selector,
            priority,
            tenant,
            mains_only,
            min_battery_percent,
        },
    ))
}

#[cfg(test)]
mod tests {
    use localml_proto::inference::infer_parameter::ParameterChoice;
    use localml_proto::inference::InferParameter;

    use super::*;

    fn with(choice: ParameterChoice) -> ModelInferRequest {
        let mut request = ModelInferRequest::default();
        request.parameters.insert(
            MIN_BATTERY_PARAMETER.into(),
            InferParameter {
                parameter_choice: Some(choice),
            },
        );
        request
    }

    #[test]
    fn min_battery_is_a_percentage() {
        let ok = |choice| {
            request_info(&with(choice), "1")
                .expect("valid")
                .1
                .min_battery_percent
        };
        assert_eq!(ok(ParameterChoice::StringParam("80".into())), Some(80.0));
        assert_eq!(ok(ParameterChoice::DoubleParam(12.5)), Some(12.5));
        assert_eq!(ok(ParameterChoice::Int64Param(100)), Some(100.0));
        for bad in [
            ParameterChoice::StringParam("full".into()),
            ParameterChoice::DoubleParam(150.0),
            ParameterChoice::DoubleParam(f64::NAN),
            ParameterChoice::Int64Param(-1),
            ParameterChoice::BoolParam(true),
        ] {
            let e = request_info(&with(bad), "1").expect_err("invalid");
            assert!(e.to_string().contains("localml.min_battery"), "{e}");
        }
        assert_eq!(
            request_info(&ModelInferRequest::default(), "1")
                .expect("none")
                .1
                .min_battery_percent,
            None
        );
    }
}
