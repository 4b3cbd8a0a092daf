"""Two more reference checkpoints and their goldens, made the way make_public_qwen.py makes tiny-qwen3moe:

  tiny-dsv2-lite      DeepSeek-V2-Lite's architecture (model_type deepseek_v2, transformers' DeepseekV2ForCausalLM):
                      MLA without q_lora, softmax scores, group_limited_greedy (4 groups, top-2 groups, top-4 of 16
                      experts), 2 shared experts, first layer dense, no top-k normalisation, YaRN
  tiny-qwen3moe-norm  Qwen3-MoE (qwen3_moe) with norm_topk_prob true and every layer sparse (mlp_only_layers [])

Each: build the config with transformers, train with make_reference.train, round to BF16, save in the hub layout
(per-expert tensor names, sharded index), reload with from_pretrained (float64, eager), check that the reloaded
parameters equal the stored ones, and compute the golden from the reloaded model in float64 on CPU.

route_topk_idx / route_margin follow the existing goldens: the selected experts in descending score order, and the
gap between the k-th and (k+1)-th selection score, group stage included (min of the group gap and the expert gap).
  qwen3_moe:   scores = softmax(x W^T) computed in float64 from the gate's input (as make_public_qwen.py does).
  deepseek_v2: transformers routes DeepSeek-V2 in float32 whatever the model dtype (the router casts its input and
               weight to float32 and takes a float32 softmax), so the scores are the float32 probabilities from
               transformers' own router logits (its gate's output, or route_tokens_to_experts' input in the older
               layout); group score = the group's best probability (group_limited_greedy), group gap = the
               topk_group-th group score minus the next one.
Both cross-check the computed selection against the experts transformers actually picked.

Runs on the GPU box (torch + transformers 5.17); writes $OUT/make_reference.log and $OUT/family.txz.part-*.
Needs make_reference.py beside it (the corpus, training loop and helpers). MAKE=tiny-dsv2-lite,tiny-qwen3moe-norm.
"""
import os, sys, json, math, time, traceback, copy, inspect
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference as R
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

log = R.log
SEQ = R.SEQ
EVAL = R.eval_tokens      # [8, 128] held-out text, the same draw as tiny-dsv3's and tiny-qwen3moe's goldens
CALIB = R.calib_tokens    # [64, 128] training text


# ------------------------------------------------------------------ routing helpers (pure torch)
def v2_route(p, E, G, kg, k, method):
    """DeepSeek-V2 routing as transformers does it. p: [T, E] float32 softmax probabilities (held exactly in float64
    here). Returns (idx [T,k] in descending score order, margin [T] float64, plain greedy idx [T,k])."""
    p = p.double()
    T = p.shape[0]
    inf = torch.full((T,), float("inf"), dtype=torch.float64)
    greedy_idx = p.topk(k, dim=-1)[1]
    if method == "group_limited_greedy":
        grp = p.view(T, G, E // G).max(dim=-1).values            # a group's score is its best expert's
        gs = grp.sort(dim=-1, descending=True).values
        gmargin = (gs[:, kg - 1] - gs[:, kg]) if kg < G else inf
        gidx = grp.topk(kg, dim=-1)[1]
        keep = torch.zeros(T, G, dtype=torch.bool).scatter_(1, gidx, True)
        masked = p.view(T, G, E // G).masked_fill(~keep[..., None], float("-inf")).view(T, E)
    elif method == "greedy":
        gmargin, masked = inf, p
    else:
        raise ValueError(f"topk_method {method!r}")
    s = masked.sort(dim=-1, descending=True).values
    emargin = s[:, k - 1] - s[:, k]
    idx = masked.topk(k, dim=-1)[1]
    return idx, torch.minimum(gmargin, emargin), greedy_idx


def qwen_route(p, k):
    """make_public_qwen.py's rule on float64 softmax probabilities: top-k, gap k-th minus (k+1)-th."""
    p = p.double()
    s = p.sort(dim=-1, descending=True)[0]
    idx = p.topk(k, dim=-1)[1]
    return idx, s[:, k - 1] - s[:, k]


def same_sets(a, b):
    """rows of a and b hold the same experts (order ignored); returns the count of rows that differ."""
    return int((a.long().sort(-1).values != b.long().sort(-1).values).any(-1).sum())


def as_probs32(o):
    """a router's float output [T, E]: softmax probabilities as they are, logits softmaxed in float32."""
    o = o.detach()
    if bool((o >= 0).all()) and float((o.double().sum(-1) - 1).abs().max()) < 1e-5:
        return o.float(), "probabilities"
    return o.float().softmax(dim=-1, dtype=torch.float32), "logits"


# ------------------------------------------------------------------ capture
class Capture:
    """Selection scores per MoE layer during one forward, plus the experts transformers selected.
    kind "qwen": softmax of float64 gate logits recomputed from the gate's input (make_public_qwen.py's rule).
    kind "v2":   the float32 scores transformers routed on: its router's own logits (or probabilities) where it
                 returns them, else its route_tokens_to_experts input, else float32 logits recomputed from the input."""

    def __init__(self, model, kind):
        self.hooks, self.scores, self.chosen, self.patched, self.how = [], [], [], [], set()
        moe = [(n, m) for n, m in model.named_modules()
               if hasattr(m, "gate") and hasattr(m, "experts") and hasattr(m.gate, "weight")]
        for n, m in moe:
            if kind == "v2" and hasattr(type(m), "route_tokens_to_experts"):   # older layout: the gate Linear is not called
                cls = type(m)
                if cls not in [c for c, _ in self.patched]:
                    orig = cls.route_tokens_to_experts
                    cap = self

                    def wrapped(self_, router_logits, *a, _orig=orig, **kw):
                        out = _orig(self_, router_logits, *a, **kw)
                        p, what = as_probs32(router_logits.reshape(-1, router_logits.shape[-1]))
                        cap.scores.append(p); cap.how.add(f"route_tokens_to_experts input ({what}, {router_logits.dtype})")
                        cap.chosen.append(out[0].detach().clone().reshape(-1, out[0].shape[-1]))
                        return out
                    cls.route_tokens_to_experts = wrapped
                    self.patched.append((cls, orig))
                continue

            def hook(mod, inp, out):
                E = mod.weight.shape[0]
                x = inp[0].detach().reshape(-1, mod.weight.shape[1])
                outs = out if isinstance(out, tuple) else (out,)
                ints = [o for o in outs if torch.is_tensor(o) and not o.dtype.is_floating_point]
                fl = [o for o in outs if torch.is_tensor(o) and o.dtype.is_floating_point and o.shape[-1] == E
                      and o.numel() == x.shape[0] * E]
                if kind == "qwen":
                    p, what = (x.double() @ mod.weight.detach().double().T).softmax(-1), "gate input, float64 logits"
                elif fl:
                    p, what = as_probs32(fl[0].reshape(-1, E)); what = f"gate output ({what}, {fl[0].dtype})"
                else:
                    p, what = F.linear(x.float(), mod.weight.detach().float()).softmax(-1, dtype=torch.float32), "recomputed float32"
                self.scores.append(p.cpu()); self.how.add(what)
                self.chosen.append(ints[0].detach().reshape(-1, ints[0].shape[-1]).cpu() if ints else None)
            self.hooks.append(m.gate.register_forward_hook(hook))

    def close(self):
        for h in self.hooks:
            h.remove()
        for cls, orig in self.patched:
            cls.route_tokens_to_experts = orig


def golden_forward(m, tokens, kind):
    R.set_eager(m)
    m = m.to("cpu").double().eval()
    cap = Capture(m, kind)
    try:
        with torch.no_grad():
            out = m(input_ids=tokens.long(), output_hidden_states=True)
    finally:
        cap.close()
    lp = torch.log_softmax(out.logits.double(), dim=-1)
    nll = -lp[:, :-1, :].gather(2, tokens.long()[:, 1:, None])[..., 0]
    gold = {"tokens": tokens.int().contiguous(), "logits": out.logits.float().contiguous(),
            "nll": nll.float().contiguous(),
            "hidden_states_seq0": torch.stack([h[0] for h in out.hidden_states]).float().contiguous()}
    return gold, cap, float(nll.mean()), out.logits.double()


def stored_vs_loaded(sd, loaded):
    back = R.canonical_state_dict(loaded)
    missing = sorted(set(sd) - set(back)); extra = sorted(set(back) - set(sd))
    worst = max(float((back[k].double() - sd[k].double()).abs().max()) for k in sd if k in back)
    return worst, missing, extra


def bf16_round(model):
    with torch.no_grad():
        for p_ in model.parameters():
            p_.copy_(p_.to(torch.bfloat16).float())
    return model.to("cpu").float()


def expert_load(idx, E):
    """[layers, B, S, k] -> per layer list of counts per expert."""
    return [torch.bincount(idx[l].reshape(-1).long(), minlength=E).tolist() for l in range(idx.shape[0])]


def write_golden(tag, gold, meta, cls_name):
    gdir = os.path.join(R.WORK, "golden", tag); os.makedirs(gdir, exist_ok=True)
    save_file(gold, os.path.join(gdir, "eval.safetensors"),
              metadata={"source": f"transformers {transformers.__version__} {cls_name}, float64 on CPU, eager attention, "
                                  "from the reloaded hub-layout checkpoint"})
    save_file({"tokens": CALIB.int().contiguous()}, os.path.join(gdir, "calib.safetensors"))
    json.dump(meta, open(os.path.join(gdir, "meta.json"), "w"), indent=2)


# ------------------------------------------------------------------ DeepSeek-V2-Lite shape
V2 = dict(vocab_size=256, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
          num_hidden_layers=4, first_k_dense_replace=1, n_routed_experts=16, num_experts_per_tok=4,
          n_shared_experts=2, n_group=4, topk_group=2, topk_method="group_limited_greedy",
          routed_scaling_factor=1.0, norm_topk_prob=False, num_attention_heads=4, num_key_value_heads=4,
          q_lora_rank=None, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
          max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
          hidden_act="silu", attention_bias=False, attention_dropout=0.0, initializer_range=0.02,
          bos_token_id=None, eos_token_id=None)
# DeepSeek-V2-Lite's rope_scaling, scaled down (V2-Lite: factor 40, original 4096, mscale = mscale_all_dim = 0.707)
YARN_V2LITE = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "beta_fast": 32, "beta_slow": 1,
               "mscale": 0.707, "mscale_all_dim": 0.707}
# DeepSeek's reference defaults (mscale 1, mscale_all_dim 0): no softmax-scale correction anywhere
YARN_DEFAULT_MAG = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "beta_fast": 32, "beta_slow": 1}


def get_mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def reference_scales(c, y):
    """(softmax scale, cos/sin factor) per DeepSeek-V2's own modeling_deepseek.py."""
    s = (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]) ** -0.5
    if y is None:
        return s, 1.0
    f = y["factor"]; ms = y.get("mscale", 1.0); mad = y.get("mscale_all_dim", 0.0)
    if mad:
        s *= get_mscale(f, mad) ** 2
    return s, get_mscale(f, ms) / get_mscale(f, mad)


def v2_config(c, y):
    from transformers import DeepseekV2Config
    kw = dict(c)
    if y is not None:
        kw["rope_scaling"] = copy.deepcopy(y)
    try:
        cfg = DeepseekV2Config(**kw)
    except Exception as ex:
        if y is None:
            raise
        log("  DeepseekV2Config refused rope_scaling:", repr(ex), "- trying rope_parameters")
        kw.pop("rope_scaling")
        rp = {k: v for k, v in y.items() if k != "type"}
        rp.update(rope_type="yarn", rope_theta=c["rope_theta"])
        kw["rope_parameters"] = rp
        cfg = DeepseekV2Config(**kw)
    try:
        cfg._attn_implementation = "eager"
    except Exception:
        pass
    return cfg


def v2_build(c, y):
    from transformers import DeepseekV2ForCausalLM
    cfg = v2_config(c, y)
    m = DeepseekV2ForCausalLM(cfg)
    attn, re = m.model.layers[0].self_attn, m.model.rotary_emb
    got = (float(attn.scaling), float(getattr(re, "attention_scaling", 1.0)), getattr(re, "rope_type", None))
    return cfg, m, got


def v2_hub_config(c, y):
    j = {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2"}
    for k in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "n_shared_experts", "n_routed_experts"):
        j[k] = c[k]
    j["ep_size"] = 1
    for k in ("routed_scaling_factor", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim",
              "qk_nope_head_dim", "topk_method", "n_group", "topk_group", "num_experts_per_tok"):
        j[k] = c[k]
    j["moe_layer_freq"] = 1
    j["first_k_dense_replace"] = c["first_k_dense_replace"]
    j["norm_topk_prob"] = c["norm_topk_prob"]
    j["scoring_func"] = "softmax"
    for k in ("hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps"):
        j[k] = c[k]
    j["use_cache"] = True
    j["tie_word_embeddings"] = c["tie_word_embeddings"]
    j["rope_theta"] = c["rope_theta"]
    j["rope_scaling"] = copy.deepcopy(y)
    for k in ("attention_bias", "attention_dropout", "bos_token_id", "eos_token_id"):
        j[k] = c[k]
    j["torch_dtype"] = "bfloat16"
    return j


def make_dsv2(tag, train_s, seed=12):
    from transformers import DeepseekV2ForCausalLM
    import transformers.models.deepseek_v2.modeling_deepseek_v2 as MD
    log(f"== {tag}")
    c = dict(V2)
    for what in ("DeepseekV2TopkRouter.forward", "DeepseekV2Moe.route_tokens_to_experts", "DeepseekV2MoE.route_tokens_to_experts"):
        try:
            cls_, fn_ = what.split(".")
            log(f"  transformers' {what}:\n" + inspect.getsource(getattr(getattr(MD, cls_), fn_)))
        except Exception as ex:
            log(f"  no {what}: {ex!r}")
    try:
        log("  DeepseekV2Attention.__init__ mentions mscale_all_dim:", "mscale_all_dim" in inspect.getsource(MD.DeepseekV2Attention.__init__))
    except Exception as ex:
        log("  DeepseekV2Attention source not readable:", repr(ex))
    # YaRN as V2-Lite declares it, if transformers computes it as DeepSeek's reference does; else the default magnitude
    y, note = YARN_V2LITE, ""
    try:
        cfg, model, got = v2_build(c, y)
        want = reference_scales(c, y)
        log("  V2-Lite yarn: transformers (softmax scale, cos/sin factor, rope type)", got, "reference", want)
        if got[2] != "yarn" or abs(got[0] - want[0]) > 1e-9 * want[0] or abs(got[1] - want[1]) > 1e-9:
            note = (f"transformers {transformers.__version__} DeepseekV2 computes V2-Lite's yarn (mscale 0.707 = mscale_all_dim) as "
                    f"softmax scale {got[0]:.9g}, cos/sin factor {got[1]:.9g}, rope {got[2]}; DeepSeek's reference gives "
                    f"{want[0]:.9g}, {want[1]:.9g}: used yarn with the default magnitude (no mscale keys) instead, where they agree")
            y = None
    except Exception as ex:
        note = f"V2-Lite yarn refused by transformers: {ex!r}; used yarn with the default magnitude"
        y = None
    if y is None:
        log("  " + note)
        y = YARN_DEFAULT_MAG
        try:
            cfg, model, got = v2_build(c, y)
            want = reference_scales(c, y)
            log("  default-magnitude yarn: transformers", got, "reference", want)
            if got[2] != "yarn" or abs(got[0] - want[0]) > 1e-9 * want[0] or abs(got[1] - want[1]) > 1e-9:
                raise RuntimeError(f"transformers {got} vs reference {want}")
        except Exception as ex:
            note += f"; that too disagreed or failed ({ex!r}): plain RoPE"
            log("  " + note)
            y = None
            cfg, model, got = v2_build(c, y)
    torch.manual_seed(seed)
    model = DeepseekV2ForCausalLM(cfg)       # fresh init under the seed
    nparams = sum(p.numel() for p in model.parameters())
    log("  rope_parameters", getattr(cfg, "rope_parameters", None), "params", nparams)
    R.train_or_load(model, tag, train_s, seed=seed)
    model = bf16_round(model)
    sd = {k: v.to(torch.bfloat16) for k, v in R.canonical_state_dict(model).items()}
    mdir = os.path.join(R.WORK, tag)
    L = c["num_hidden_layers"]
    R.save_sharded(sd, mdir, [lambda k: k.startswith("model.embed_tokens") or any(k.startswith(f"model.layers.{i}.") for i in (0, 1)),
                              lambda k: any(k.startswith(f"model.layers.{i}.") for i in range(2, L)),
                              lambda k: True])
    hj = v2_hub_config(c, y)
    json.dump(hj, open(os.path.join(mdir, "config.json"), "w"), indent=2)
    # the in-memory model's logits, to report the reload difference
    with torch.no_grad():
        R.set_eager(model)
        mem_logits = copy.deepcopy(model).double().eval()(input_ids=EVAL.long()).logits.double()
    loaded, info = R.load_pretrained(DeepseekV2ForCausalLM, mdir)
    log("  reload missing:", info.get("missing_keys"), "unexpected:", list(info.get("unexpected_keys", []))[:8],
        "mismatched:", info.get("mismatched_keys"))
    worst, missing, extra = stored_vs_loaded(sd, loaded)
    log(f"  reload: max |stored - loaded| {worst:.3g}, missing {missing[:5]}, extra {extra[:5]}")
    assert worst == 0.0 and not missing, "transformers did not read back the checkpoint we wrote"
    la, lr = loaded.model.layers[0].self_attn, loaded.model.rotary_emb
    scales = {"attn_softmax_scale": float(la.scaling), "rope_attention_factor": float(getattr(lr, "attention_scaling", 1.0)),
              "rope_type": getattr(lr, "rope_type", None), "reference_softmax_scale": reference_scales(c, y)[0],
              "reference_rope_attention_factor": reference_scales(c, y)[1]}
    log("  reloaded model scales:", scales)
    if abs(scales["attn_softmax_scale"] - got[0]) > 1e-12 or abs(scales["rope_attention_factor"] - got[1]) > 1e-12 or scales["rope_type"] != got[2]:
        note += f"; the reloaded model's scales {scales} differ from the built one's {got}"
        log("  WARNING" + note)
    gold, cap, nll, logits = golden_forward(loaded, EVAL, "v2")
    log("  routing scores from:", cap.how)
    d = float((logits - mem_logits).abs().max())
    log(f"  eval mean nll {nll:.4f} nats/byte, ppl {math.exp(nll):.3f}; reload max |dlogits| {d:.3g}")
    moe_layers = [li for li in range(L) if li >= c["first_k_dense_replace"]]
    assert len(cap.scores) == len(moe_layers), f"captured {len(cap.scores)} router calls for {len(moe_layers)} MoE layers"
    B = EVAL.shape[0]; k = c["num_experts_per_tok"]
    idxs, margins, mism, grouped, dtypes, unchecked = [], [], 0, 0, set(), 0
    for p, ch in zip(cap.scores, cap.chosen):
        dtypes.add(str(p.dtype))
        idx, mg, gidx = v2_route(p.cpu(), c["n_routed_experts"], c["n_group"], c["topk_group"], k, c["topk_method"])
        if ch is None:
            unchecked += 1
        else:
            mism += same_sets(idx, ch.cpu())
        grouped += same_sets(idx, gidx)
        idxs.append(idx.view(B, SEQ, k).int()); margins.append(mg.view(B, SEQ).float())
    gold["route_topk_idx"] = torch.stack(idxs).contiguous()
    gold["route_margin"] = torch.stack(margins).contiguous()
    rm = gold["route_margin"]
    log(f"  routing: score dtype {dtypes}, rows differing from transformers' choice {mism} (layers unchecked {unchecked}), "
        f"rows where the group stage changed the selection {grouped}, min margin {float(rm.min()):.3g}, "
        f"<1e-4: {int((rm < 1e-4).sum())}, <1e-6: {int((rm < 1e-6).sum())}")
    meta = {"model": tag, "eval_mean_nll": nll, "eval_ppl": math.exp(nll), "reload_max_abs_logit_diff": d,
            "params": nparams, "transformers": transformers.__version__, "torch": torch.__version__,
            "class": "DeepseekV2ForCausalLM", "rope_scaling": y, **scales,
            "routing_scores": "float32 softmax of float32 router logits, as transformers routes (" + "; ".join(sorted(cap.how)) + ")",
            "route_rows_differing_from_transformers": mism, "route_rows_group_stage_changed": grouped,
            "route_min_margin": float(rm.min()), "route_unstable_1e-4": int((rm < 1e-4).sum()),
            "route_unstable_1e-6": int((rm < 1e-6).sum()), "expert_load": expert_load(gold["route_topk_idx"], c["n_routed_experts"])}
    if note:
        meta["note"] = note
    write_golden(tag, gold, meta, "DeepseekV2ForCausalLM")
    log("  meta:", {k_: v for k_, v in meta.items() if k_ != "expert_load"})


# ------------------------------------------------------------------ Qwen3-MoE, normalised top-k, all layers sparse
QN = dict(vocab_size=256, hidden_size=192, intermediate_size=384, moe_intermediate_size=96,
          num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=32,
          num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
          mlp_only_layers=[], rope_theta=10000.0, max_position_embeddings=512,
          rms_norm_eps=1e-6, tie_word_embeddings=False)


def make_qwen_norm(tag, train_s, seed=45):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    log(f"== {tag}")
    c = dict(QN)
    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(**copy.deepcopy(c))
    model = Qwen3MoeForCausalLM(cfg)
    nparams = sum(p.numel() for p in model.parameters())
    log("  params", nparams, "mlp_only_layers", cfg.mlp_only_layers, "norm_topk_prob", cfg.norm_topk_prob)
    R.train_or_load(model, tag, train_s, seed=seed)
    model = bf16_round(model)
    sd = {k: v.to(torch.bfloat16) for k, v in R.canonical_state_dict(model).items()}
    mdir = os.path.join(R.WORK, tag)
    R.save_sharded(sd, mdir, [lambda k: k.startswith("model.embed_tokens") or k.startswith("model.layers.0.") or k.startswith("model.layers.1."),
                              lambda k: True])
    cj = dict(c); cj.update({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "torch_dtype": "bfloat16",
                             "hidden_act": "silu", "attention_bias": False, "output_router_logits": False})
    json.dump(cj, open(os.path.join(mdir, "config.json"), "w"), indent=2)
    with torch.no_grad():
        R.set_eager(model)
        mem_logits = copy.deepcopy(model).double().eval()(input_ids=EVAL.long()).logits.double()
    loaded, info = R.load_pretrained(Qwen3MoeForCausalLM, mdir)
    log("  reload missing:", info.get("missing_keys"), "unexpected:", list(info.get("unexpected_keys", []))[:8],
        "mismatched:", info.get("mismatched_keys"))
    worst, missing, extra = stored_vs_loaded(sd, loaded)
    log(f"  reload: max |stored - loaded| {worst:.3g}, missing {missing[:5]}, extra {extra[:5]}")
    assert worst == 0.0 and not missing, "transformers did not read back the checkpoint we wrote"
    assert loaded.config.norm_topk_prob is True and list(loaded.config.mlp_only_layers) == []
    gold, cap, nll, logits = golden_forward(loaded, EVAL, "qwen")
    d = float((logits - mem_logits).abs().max())
    log(f"  eval mean nll {nll:.4f} nats/byte, ppl {math.exp(nll):.3f}; reload max |dlogits| {d:.3g}")
    assert len(cap.scores) == c["num_hidden_layers"], f"captured {len(cap.scores)} router calls"
    B = EVAL.shape[0]; k = c["num_experts_per_tok"]
    idxs, margins, mism = [], [], 0
    for p, ch in zip(cap.scores, cap.chosen):
        idx, mg = qwen_route(p, k)
        if ch is not None:
            mism += same_sets(idx, ch.cpu())
        idxs.append(idx.view(B, SEQ, k).int()); margins.append(mg.view(B, SEQ).float())
    gold["route_topk_idx"] = torch.stack(idxs).contiguous()
    gold["route_margin"] = torch.stack(margins).contiguous()
    rm = gold["route_margin"]
    log(f"  routing: rows differing from transformers' choice {mism} (its softmax is float32), min margin {float(rm.min()):.3g}, "
        f"<1e-4: {int((rm < 1e-4).sum())}, <1e-6: {int((rm < 1e-6).sum())}")
    meta = {"model": tag, "eval_mean_nll": nll, "eval_ppl": math.exp(nll), "reload_max_abs_logit_diff": d,
            "params": nparams, "transformers": transformers.__version__, "torch": torch.__version__,
            "class": "Qwen3MoeForCausalLM", "routing_scores": "softmax of float64 gate logits (transformers' router softmaxes in float32)",
            "route_rows_differing_from_transformers": mism, "route_min_margin": float(rm.min()),
            "route_unstable_1e-4": int((rm < 1e-4).sum()), "route_unstable_1e-6": int((rm < 1e-6).sum()),
            "expert_load": expert_load(gold["route_topk_idx"], c["num_experts"])}
    write_golden(tag, gold, meta, "Qwen3MoeForCausalLM")
    log("  meta:", {k_: v for k_, v in meta.items() if k_ != "expert_load"})


def main():
    t0 = time.time()
    jobs = {"tiny-dsv2-lite": lambda: make_dsv2("tiny-dsv2-lite", float(os.environ.get("TRAIN_V2", 120))),
            "tiny-qwen3moe-norm": lambda: make_qwen_norm("tiny-qwen3moe-norm", float(os.environ.get("TRAIN_QN", 70)))}
    made = []
    for tag in os.environ.get("MAKE", ",".join(jobs)).split(","):
        try:
            jobs[tag](); made.append(tag)
        except Exception:
            log(traceback.format_exc())
        log("elapsed", round(time.time() - t0, 1))
    return made


if __name__ == "__main__":
    made = main()
    import subprocess
    paths = " ".join(p for t in made for p in (t, f"golden/{t}"))
    if paths:
        sh = (f"cd {R.WORK} && ls -laR {paths} && tar cf - {paths} | xz -T0 -9 | split -b 15m - {R.OUT}/family.txz.part- "
              f"&& ls -la {R.OUT}")
        r = subprocess.run(sh, shell=True, capture_output=True, text=True)
        log(r.stdout + r.stderr)
    log("done", made)
