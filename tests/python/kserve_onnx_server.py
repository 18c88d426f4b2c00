"""KServe's Python ModelServer serving one ONNX file with onnxruntime: the peer that
localml-bench --peer compares localml with (same model, same client, same sitting).

    python kserve_onnx_server.py MODEL.onnx NAME GRPC_PORT HTTP_PORT

onnxruntime runs with one intra-op thread, as localml's benchmark workers do.
"""
import sys

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name, path):
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            path, options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy()
        results = self.session.run(None, {self.input_name: x})
        outputs = []
        for name, y in zip(self.output_names, results):
            out = InferOutput(name=name, shape=list(y.shape), datatype="FP32")
            out.set_data_from_numpy(y, binary_data=payload.from_grpc)
            outputs.append(out)
        return InferResponse(
            model_name=self.name,
            infer_outputs=outputs,
            response_id=payload.id,
            from_grpc=payload.from_grpc,
            use_binary_outputs=payload.from_grpc,
        )


if __name__ == "__main__":
    path, name, grpc_port, http_port = sys.argv[1:5]
    model = OnnxModel(name, path)
    kserve.ModelServer(
        grpc_port=int(grpc_port), http_port=int(http_port), workers=1
    ).start([model])
