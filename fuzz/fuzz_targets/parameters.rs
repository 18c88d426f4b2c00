//! Request parameters as a client sends them (a protobuf `ModelInferRequest`): the
//! scheduler's reading of its scheduling parameters, of the request's head as it forwards
//! it, and the worker's priority. Properties: no panic; the head read without the tensors
//! says what the whole request says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use localml_proto::inference::ModelInferRequest;
use localml_scheduler::forward::RequestHead;
use localml_scheduler::parameters::request_info;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ModelInferRequest::decode(data) else {
        return;
    };
    let head = RequestHead::decode(data).expect("the head of a request that decodes decodes");
    assert_eq!(head.model_name, request.model_name);
    // Compared as text, in key order: a NaN parameter is not equal to itself.
    let sorted = |m: &std::collections::HashMap<String, _>| {
        let mut entries: Vec<String> = m.iter().map(|e| format!("{e:?}")).collect();
        entries.sort();
        entries
    };
    assert_eq!(sorted(&head.parameters), sorted(&request.parameters));
    let whole = request_info(&request, &request.model_version);
    let from_head = request_info(&head, &head.model_version);
    assert_eq!(
        format!("{whole:?}"),
        format!("{from_head:?}"),
        "the head and the request read differently"
    );
    let _ = localml_proto::parameters::priority(&request.parameters);
});
