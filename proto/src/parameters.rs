//! The OIP request and response parameters localml gives a meaning to (`localml.*`),
//! named once for the scheduler, the worker and the clients.

use crate::inference::infer_parameter::ParameterChoice;
use crate::inference::ModelInferResponse;

/// Request parameters (OIP `parameters`) that steer scheduling.
pub const PROFILE_PARAMETER: &str = "localml.profile";
pub const PROVIDER_PARAMETER: &str = "localml.provider";
pub const SELECTOR_PARAMETER: &str = "localml.selector";
pub const PRIORITY_PARAMETER: &str = "localml.priority";
pub const TENANT_PARAMETER: &str = "localml.tenant";
pub const POWER_PARAMETER: &str = "localml.power";
/// Only a worker on mains whose battery or UPS is charged to at least this many percent.
pub const MIN_BATTERY_PARAMETER: &str = "localml.min_battery";
/// Response parameter naming the worker that served a request (set by workers).
pub const WORKER_PARAMETER: &str = "localml.worker";
/// Response parameter naming the catalog variant that served a request (fp32, fp16,
/// int8; set by workers for catalog models).
pub const VARIANT_PARAMETER: &str = "localml.variant";

/// A request's `localml.priority` (higher first; 0 when absent): an integer, or a string
/// holding one. The error is the string that is not an integer, or None for a parameter
/// of another type.
pub fn priority(
    parameters: &std::collections::HashMap<String, crate::inference::InferParameter>,
) -> Result<i64, Option<String>> {
    match parameters
        .get(PRIORITY_PARAMETER)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(0),
        Some(ParameterChoice::Int64Param(p)) => Ok(*p),
        Some(ParameterChoice::StringParam(s)) => s.parse().map_err(|_| Some(s.clone())),
        Some(_) => Err(None),
    }
}

/// The worker that served `response`, when it says.
pub fn served_by(response: &ModelInferResponse) -> Option<String> {
    match response
        .parameters
        .get(WORKER_PARAMETER)?
        .parameter_choice
        .as_ref()?
    {
        ParameterChoice::StringParam(s) => Some(s.clone()),
        _ => None,
    }
}
