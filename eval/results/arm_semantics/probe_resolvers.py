# Scratch probe: same .tflite under the three LiteRT resolvers, outside the repo's agent/runner plumbing.
import sys, hashlib, platform, numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
import ai_edge_litert, importlib.metadata as md
print("machine", platform.machine(), "litert", md.version("ai-edge-litert"), ai_edge_litert.__file__)
rng = np.random.default_rng(0)
outs = {}
for path in sys.argv[1:]:
    for name in ["AUTO", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF", "BUILTIN"]:
        it = Interpreter(model_path=path, num_threads=1, experimental_op_resolver_type=getattr(OpResolverType, name))
        it.allocate_tensors()
        ops = it._get_ops_details()
        kinds = {}
        for o in ops: kinds[o["op_name"]] = kinds.get(o["op_name"], 0) + 1
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        rng = np.random.default_rng(0)
        res = []
        for k in range(8):
            x = (rng.integers(0, 256, size=inp["shape"]).astype(np.float32) / 255.0 - 0.5) / 0.25 if inp["dtype"] == np.float32 else rng.integers(np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max + 1, size=inp["shape"], dtype=inp["dtype"])
            it.set_tensor(inp["index"], x); it.invoke(); res.append(it.get_tensor(out["index"]).copy())
        res = np.stack(res); outs[(path, name)] = res
        print(path.split("/")[-1], name, "nodes", len(ops), "DELEGATE", kinds.get("DELEGATE", 0), dict(sorted(kinds.items())),
              "out sha", hashlib.sha256(res.tobytes()).hexdigest()[:16])
    for a in ["BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF", "BUILTIN"]:
        d = outs[(path, a)].astype(np.float64) - outs[(path, "AUTO")].astype(np.float64)
        print("   ", a, "vs AUTO(xnnpack): differing output ints", int((d != 0).sum()), "of", d.size, "max", float(np.abs(d).max()))
    d = outs[(path, "BUILTIN_WITHOUT_DEFAULT_DELEGATES")].astype(np.float64) - outs[(path, "BUILTIN_REF")].astype(np.float64)
    print("    BUILTIN_WITHOUT_DEFAULT_DELEGATES vs BUILTIN_REF: differing", int((d != 0).sum()), "max", float(np.abs(d).max()))
