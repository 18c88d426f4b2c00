//! Open Inference Protocol answers built from a model's signature, shared by the
//! scheduler (which answers from cluster state) and the worker (which answers from the
//! loaded model), so both report a model identically.

use crate::inference::{
    model_config, model_metadata_response::TensorMetadata, model_version_policy,
    DataType as ConfigDataType, ModelConfig, ModelConfigResponse, ModelDynamicBatching, ModelInput,
    ModelInstanceGroup, ModelMetadataResponse, ModelOutput, ModelVersionPolicy,
    ServerMetadataResponse,
};
use crate::localml::v1::{ModelSignature, TensorSpec};
use crate::tensor::DataType;

/// Triton's platform name for ONNX models.
pub const PLATFORM: &str = "onnxruntime_onnx";
/// Server extensions localml implements, as reported by ServerMetadata.
pub const EXTENSIONS: &[&str] = &["model_configuration", "statistics"];

/// Triton's config datatype for a protocol datatype name.
pub fn config_datatype(name: &str) -> ConfigDataType {
    match DataType::parse(name) {
        Some(DataType::Bool) => ConfigDataType::TypeBool,
        Some(DataType::Uint8) => ConfigDataType::TypeUint8,
        Some(DataType::Uint16) => ConfigDataType::TypeUint16,
        Some(DataType::Uint32) => ConfigDataType::TypeUint32,
        Some(DataType::Uint64) => ConfigDataType::TypeUint64,
        Some(DataType::Int8) => ConfigDataType::TypeInt8,
        Some(DataType::Int16) => ConfigDataType::TypeInt16,
        Some(DataType::Int32) => ConfigDataType::TypeInt32,
        Some(DataType::Int64) => ConfigDataType::TypeInt64,
        Some(DataType::Fp16) => ConfigDataType::TypeFp16,
        Some(DataType::Fp32) => ConfigDataType::TypeFp32,
        Some(DataType::Fp64) => ConfigDataType::TypeFp64,
        Some(DataType::Bytes) => ConfigDataType::TypeString,
        None => ConfigDataType::TypeInvalid,
    }
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.clone(),
            shape: s.shape.clone(),
        })
        .collect()
}

/// ServerMetadata for a localml process: its name and version, and the extensions
/// localml implements.
pub fn server_metadata(name: &str, version: &str) -> ServerMetadataResponse {
    ServerMetadataResponse {
        name: name.to_string(),
        version: version.to_string(),
        extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
    }
}

/// ModelMetadata: shapes include the batch dimension (-1) when the model batches.
pub fn model_metadata(
    name: &str,
    versions: Vec<String>,
    signature: &ModelSignature,
) -> ModelMetadataResponse {
    ModelMetadataResponse {
        name: name.to_string(),
        versions,
        platform: PLATFORM.to_string(),
        inputs: tensor_metadata(&signature.inputs),
        outputs: tensor_metadata(&signature.outputs),
    }
}

/// Config dims leave the batch dimension out when `max_batch_size > 0` (Triton's rule).
fn config_dims(shape: &[i64], max_batch_size: u32) -> Vec<i64> {
    if max_batch_size > 0 && !shape.is_empty() {
        shape[1..].to_vec()
    } else {
        shape.to_vec()
    }
}

/// ModelConfig with what a Triton client needs: platform, max_batch_size, inputs and
/// outputs with dims, and the instance count.
pub fn model_config(
    name: &str,
    max_batch_size: u32,
    instances: u32,
    gpu: bool,
    signature: &ModelSignature,
    dynamic_batching: Option<&crate::localml::v1::DynamicBatching>,
) -> ModelConfigResponse {
    let input = signature
        .inputs
        .iter()
        .map(|s| ModelInput {
            name: s.name.clone(),
            data_type: config_datatype(&s.datatype) as i32,
            dims: config_dims(&s.shape, max_batch_size),
            ..Default::default()
        })
        .collect();
    let output = signature
        .outputs
        .iter()
        .map(|s| ModelOutput {
            name: s.name.clone(),
            data_type: config_datatype(&s.datatype) as i32,
            dims: config_dims(&s.shape, max_batch_size),
            ..Default::default()
        })
        .collect();
    use crate::inference::model_instance_group::Kind;
    ModelConfigResponse {
        config: Some(ModelConfig {
            name: name.to_string(),
            platform: PLATFORM.to_string(),
            backend: "onnxruntime".to_string(),
            max_batch_size: i32::try_from(max_batch_size).unwrap_or(i32::MAX),
            input,
            output,
            version_policy: Some(ModelVersionPolicy {
                policy_choice: Some(model_version_policy::PolicyChoice::Latest(
                    model_version_policy::Latest { num_versions: 1 },
                )),
            }),
            instance_group: vec![ModelInstanceGroup {
                count: i32::try_from(instances).unwrap_or(i32::MAX),
                kind: if gpu { Kind::Gpu } else { Kind::Cpu } as i32,
                ..Default::default()
            }],
            default_model_filename: "model.onnx".to_string(),
            scheduling_choice: dynamic_batching.map(|b| {
                model_config::SchedulingChoice::DynamicBatching(ModelDynamicBatching {
                    preferred_batch_size: b
                        .preferred_batch_size
                        .iter()
                        .map(|&n| i32::try_from(n).unwrap_or(i32::MAX))
                        .collect(),
                    max_queue_delay_microseconds: b.max_queue_delay_microseconds,
                    ..Default::default()
                })
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> ModelSignature {
        ModelSignature {
            inputs: vec![TensorSpec {
                name: "image".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 3, 32, 32],
            }],
            outputs: vec![TensorSpec {
                name: "probabilities".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 10],
            }],
        }
    }

    #[test]
    fn config_drops_batch_dim_only_when_batching() {
        let batching = crate::localml::v1::DynamicBatching {
            max_queue_delay_microseconds: 500,
            preferred_batch_size: vec![4, 8],
        };
        let batched = model_config("m", 8, 2, false, &sig(), Some(&batching))
            .config
            .expect("config");
        assert_eq!(batched.max_batch_size, 8);
        assert_eq!(batched.input[0].dims, vec![3, 32, 32]);
        assert_eq!(batched.output[0].dims, vec![10]);
        assert_eq!(batched.input[0].data_type, ConfigDataType::TypeFp32 as i32);
        assert_eq!(batched.platform, "onnxruntime_onnx");
        // Triton's dynamic_batching, as perf_analyzer and Triton's clients read it.
        match batched.scheduling_choice {
            Some(model_config::SchedulingChoice::DynamicBatching(b)) => {
                assert_eq!(b.max_queue_delay_microseconds, 500);
                assert_eq!(b.preferred_batch_size, vec![4, 8]);
            }
            other => panic!("no dynamic_batching: {other:?}"),
        }
        let unbatched = model_config("m", 0, 1, false, &sig(), None)
            .config
            .expect("config");
        assert_eq!(unbatched.input[0].dims, vec![-1, 3, 32, 32]);
        assert_eq!(unbatched.scheduling_choice, None);
    }

    #[test]
    fn metadata_keeps_full_shapes() {
        let md = model_metadata("m", vec!["1".into()], &sig());
        assert_eq!(md.inputs[0].shape, vec![-1, 3, 32, 32]);
        assert_eq!(md.platform, PLATFORM);
    }

    #[test]
    fn every_datatype_maps_to_a_config_type() {
        for dt in DataType::ALL {
            assert_ne!(
                config_datatype(dt.as_str()),
                ConfigDataType::TypeInvalid,
                "{dt}"
            );
        }
        assert_eq!(config_datatype("BF16"), ConfigDataType::TypeInvalid);
    }
}
