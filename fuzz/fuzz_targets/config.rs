//! YAML configuration as an operator writes it: the scheduler's (with its profiles), the
//! worker's, and a model's config.yaml. Property: no panic, whatever the text; a config
//! that parses is validated without panicking too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use localml_scheduler::config::SchedulerConfig;
use localml_worker::config::WorkerConfig;
use localml_worker::repository::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = serde_yaml::from_str::<SchedulerConfig>(text) {
        let _ = config.validate();
    }
    let _ = serde_yaml::from_str::<WorkerConfig>(text);
    if let Ok(model) = serde_yaml::from_str::<ModelConfig>(text) {
        if let Some(batching) = &model.dynamic_batching {
            let _ = batching.policy(model.max_batch_size.unwrap_or(0));
        }
    }
});
