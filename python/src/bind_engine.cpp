// Bindings of the decoder engine (and the CPU helix_attention: bind_helix_attention.cpp).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "arrays.hpp"
#include "helix/engine.hpp"
#include "helix/helix_attention.hpp"

namespace nb = nanobind;

namespace helix::bind {

void bind_helix_attention(nb::module_& m, Device dev);  // bind_helix_attention.cpp

namespace {

DType parse_kv_dtype(const std::string& s) {
  if (s == "float32") return DType::Float32;
  if (s == "bfloat16") return DType::BFloat16;
  throw ArgumentError("kv_dtype must be 'float32' or 'bfloat16', got '" + s + "'");
}

// tokens [T], positions [T], seq_ids [B], q_seq_index [T], logit_rows [L] -> logits [L, vocab_size] float32,
// or (logits, hidden [H, hidden_size] float32) with hidden_rows [H].
nb::object step(Engine& e, nb::handle tokens, nb::handle positions, nb::handle seq_ids, nb::handle q_seq_index,
                nb::handle logit_rows, nb::handle hidden_rows) {
  HostArray ta = to_view(tokens, "tokens"), pa = to_view(positions, "positions"), sa = to_view(seq_ids, "seq_ids"),
            ia = to_view(q_seq_index, "q_seq_index"), la = to_view(logit_rows, "logit_rows");
  HELIX_CHECK_ARG(la.view.ndim() == 1, "argument 'logit_rows' must be 1-D");
  HostArray out = new_array({la.view.dim(0), e.config().vocab_size}, DType::Float32);
  const bool want_hidden = !hidden_rows.is_none();
  HostArray ha = want_hidden ? to_view(hidden_rows, "hidden_rows") : HostArray{};
  HELIX_CHECK_ARG(!want_hidden || ha.view.ndim() == 1, "argument 'hidden_rows' must be 1-D");
  HostArray hidden = want_hidden ? new_array({ha.view.dim(0), e.config().hidden_size}, DType::Float32) : HostArray{};
  {
    nb::gil_scoped_release release;
    e.step(ta.view, pa.view, sa.view, ia.view, la.view, out.view, ha.view, hidden.view);
  }
  if (want_hidden) return nb::make_tuple(out.owner, hidden.owner);
  return out.owner;
}

// hidden [T, hidden_size] f32, next_tokens [T], positions [T], seq_ids [B], q_seq_index [T], logit_rows [L]
// -> (g [L, hidden_size], logits [L, vocab_size]) float32.
nb::object mtp_step(Engine& e, nb::handle hidden, nb::handle next_tokens, nb::handle positions, nb::handle seq_ids,
                    nb::handle q_seq_index, nb::handle logit_rows) {
  HostArray ha = to_view(hidden, "hidden"), ta = to_view(next_tokens, "next_tokens"),
            pa = to_view(positions, "positions"), sa = to_view(seq_ids, "seq_ids"),
            ia = to_view(q_seq_index, "q_seq_index"), la = to_view(logit_rows, "logit_rows");
  HELIX_CHECK_ARG(la.view.ndim() == 1, "argument 'logit_rows' must be 1-D");
  HostArray g = new_array({la.view.dim(0), e.config().hidden_size}, DType::Float32);
  HostArray logits = new_array({la.view.dim(0), e.config().vocab_size}, DType::Float32);
  {
    nb::gil_scoped_release release;
    e.mtp_step(ha.view, ta.view, pa.view, sa.view, ia.view, la.view, g.view, logits.view);
  }
  return nb::make_tuple(g.owner, logits.owner);
}

}  // namespace

void bind_engine(nb::module_& m) {
  bind_helix_attention(m, Device::Cpu);
  m.def("helix_exchange_bytes", &helix_exchange_bytes, nb::arg("cp"), nb::arg("T"), nb::arg("H_tp"), nb::arg("width"),
        "Bytes one rank sends per Helix attention step.");

  nb::class_<EngineConfig>(m, "EngineConfig", "Model dimensions and the parallel layout of one rank.")
      .def(nb::init<>())
      .def_rw("vocab_size", &EngineConfig::vocab_size)
      .def_rw("hidden_size", &EngineConfig::hidden_size)
      .def_rw("num_layers", &EngineConfig::num_layers)
      .def_rw("num_heads", &EngineConfig::num_heads)
      .def_rw("q_lora_rank", &EngineConfig::q_lora_rank)
      .def_rw("kv_lora_rank", &EngineConfig::kv_lora_rank)
      .def_rw("qk_nope_head_dim", &EngineConfig::qk_nope_head_dim)
      .def_rw("qk_rope_head_dim", &EngineConfig::qk_rope_head_dim)
      .def_rw("v_head_dim", &EngineConfig::v_head_dim)
      .def_rw("intermediate_size", &EngineConfig::intermediate_size)
      .def_rw("moe_intermediate_size", &EngineConfig::moe_intermediate_size)
      .def_rw("n_routed_experts", &EngineConfig::n_routed_experts)
      .def_rw("num_experts_per_tok", &EngineConfig::num_experts_per_tok)
      .def_rw("n_shared_experts", &EngineConfig::n_shared_experts)
      .def_rw("n_group", &EngineConfig::n_group)
      .def_rw("topk_group", &EngineConfig::topk_group)
      .def_rw("first_k_dense_replace", &EngineConfig::first_k_dense_replace)
      .def_rw("moe_layer_freq", &EngineConfig::moe_layer_freq)
      .def_rw("norm_topk_prob", &EngineConfig::norm_topk_prob)
      .def_rw("routed_scaling_factor", &EngineConfig::routed_scaling_factor)
      .def_rw("rms_norm_eps", &EngineConfig::rms_norm_eps)
      .def_rw("softmax_scale", &EngineConfig::softmax_scale)
      .def_rw("rope_attention_factor", &EngineConfig::rope_attention_factor)
      .def_rw("rope_inv_freq", &EngineConfig::rope_inv_freq)
      .def_rw("tp", &EngineConfig::tp)
      .def_rw("cp", &EngineConfig::cp)
      .def_rw("rank", &EngineConfig::rank)
      .def_rw("tokens_per_block", &EngineConfig::tokens_per_block)
      .def_rw("num_kv_blocks", &EngineConfig::num_kv_blocks)
      .def_prop_rw(
          "kv_dtype", [](const EngineConfig& c) { return std::string(dtype_name(c.kv_dtype)); },
          [](EngineConfig& c, const std::string& s) { c.kv_dtype = parse_kv_dtype(s); })
      .def_rw("wuv_before_exchange", &EngineConfig::wuv_before_exchange)
      .def_rw("expert_tensor_parallel", &EngineConfig::expert_tensor_parallel)
      .def_rw("num_mtp_layers", &EngineConfig::num_mtp_layers)
      .def("is_moe_layer", &EngineConfig::is_moe_layer)
      .def("vocab_shard", &EngineConfig::vocab_shard);

  nb::class_<Engine>(m, "Engine",
                     "The decoder engine of one rank (sharded weights, paged KV cache of every layer) on the CPU or "
                     "one GPU: one contract, the device chosen at construction.")
      .def(
          "__init__",
          [](Engine* self, const EngineConfig& config, Communicator& world, const std::string& device, int cuda_device,
             const std::string& cuda_comm) {
            HELIX_CHECK_ARG(device == "cpu" || device == "cuda", "argument 'device' must be 'cpu' or 'cuda', got '",
                            device, "'");
            HELIX_CHECK_ARG(cuda_comm == "nccl" || cuda_comm == "host",
                            "argument 'cuda_comm' must be 'nccl' or 'host', got '", cuda_comm, "'");
            const EngineDevice where{device == "cpu" ? Device::Cpu : Device::Cuda, cuda_device,
                                     cuda_comm == "nccl" ? CudaComm::Nccl : CudaComm::Host};
            nb::gil_scoped_release release;  // the CP split and the NCCL bootstrap are collective over `world`
            new (self) Engine(config, world, where);
          },
          nb::arg("config"), nb::arg("world"), nb::arg("device") = "cpu", nb::arg("cuda_device") = 0,
          nb::arg("cuda_comm") = "nccl", nb::keep_alive<1, 3>(),
          "device: 'cpu' or 'cuda' (CUDA device `cuda_device`; cuda_comm: 'nccl' with one GPU per rank, or 'host':\n"
          "collectives over `world` with device buffers staged through host memory, so ranks may share a GPU).")
      .def(
          "set_weight",
          [](Engine& e, const std::string& name, nb::handle w) {
            HostArray a = to_view(w, name.c_str());
            e.set_weight(name, a.view);
          },
          nb::arg("name"), nb::arg("weight"))
      .def("check_weights", &Engine::check_weights)
      .def("expected_weights", &Engine::expected_weights)
      .def(
          "expected_weight_shapes",
          [](const Engine& e) {
            nb::dict d;
            for (const auto& [name, w] : e.expected_weight_shapes()) {
              d[name.c_str()] = nb::make_tuple(nb::cast(w.shape), w.matrix);
            }
            return d;
          },
          "{name: (shard shape, is_matrix)}: matrices may be float32 or bfloat16, the rest is float32.")
      .def("add_sequence", &Engine::add_sequence, nb::arg("seq_id"), nb::arg("reserve_tokens") = 0,
           "Register an empty sequence, reserving the KV blocks of positions [0, reserve_tokens) on every CP rank.")
      .def("free_sequence", &Engine::free_sequence, nb::arg("seq_id"))
      .def("truncate", &Engine::truncate, nb::arg("seq_id"), nb::arg("num_tokens"),
           "Keep positions [0, num_tokens) of the sequence in every layer's cache (rejected drafts released).")
      .def("truncate_mtp", &Engine::truncate_mtp, nb::arg("seq_id"), nb::arg("num_tokens"),
           "The same for the MTP layer's cache.")
      .def_prop_ro("num_free_blocks", &Engine::num_free_blocks)
      .def_prop_ro("num_kv_blocks", &Engine::num_kv_blocks)
      .def_prop_ro("device", [](const Engine& e) { return std::string(device_label(e.device().kind)); })
      .def_prop_ro("memory_bytes", &Engine::memory_bytes,
                   "Bytes the engine's backend holds: weights, KV pools, workspaces (GPU memory on 'cuda').")
      .def_prop_ro("block_table", &Engine::block_table, nb::rv_policy::reference_internal,
                   "This rank's KV bookkeeping (a BlockTable shared by every layer).")
      .def_prop_ro("mtp_block_table", &Engine::mtp_block_table, nb::rv_policy::reference_internal,
                   "The MTP layer's KV bookkeeping (its own BlockTable; ArgumentError without an MTP layer).")
      .def("mtp_step", &mtp_step, nb::arg("hidden"), nb::arg("next_tokens"), nb::arg("positions"), nb::arg("seq_ids"),
           nb::arg("q_seq_index"), nb::arg("logit_rows"),
           "One pass of the MTP layer: hidden [T, hidden_size] f32 (the model's final hidden states, or g of the\n"
           "previous draft), next_tokens [T], positions [T], seq_ids [B], q_seq_index [T], logit_rows [L]\n"
           "-> (g [L, hidden_size], logits [L, vocab_size]) float32, identical on every rank.")
      .def(
          "fill_sequence_random",
          [](Engine& e, int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale) {
            nb::gil_scoped_release release;
            e.fill_sequence_random(seq_id, num_tokens, seed, scale);
          },
          nb::arg("seq_id"), nb::arg("num_tokens"), nb::arg("seed") = 0, nb::arg("scale") = 1.f,
          "Benchmark aid: positions [0, num_tokens) of an empty sequence with random rows in every layer.")
      .def(
          "fill_mtp_sequence_random",
          [](Engine& e, int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale) {
            nb::gil_scoped_release release;
            e.fill_mtp_sequence_random(seq_id, num_tokens, seed, scale);
          },
          nb::arg("seq_id"), nb::arg("num_tokens"), nb::arg("seed") = 0, nb::arg("scale") = 1.f,
          "The same for the MTP layer's cache: rows [0, num_tokens) of a sequence empty there.")
      .def("step", &step, nb::arg("tokens"), nb::arg("positions"), nb::arg("seq_ids"), nb::arg("q_seq_index"),
           nb::arg("logit_rows"), nb::arg("hidden_rows") = nb::none(),
           "One forward pass: tokens [T], positions [T], seq_ids [B], q_seq_index [T], logit_rows [L]\n"
           "-> logits [L, vocab_size] float32 (host memory), identical on every rank; with hidden_rows [H],\n"
           "(logits, hidden [H, hidden_size] float32): those rows' final hidden states (after the norm).")
      .def_prop_ro("timings", [](const Engine& e) {
        const EngineTimings& t = e.timings();
        nb::dict d;
        d["attention_s"] = t.attention_s;
        d["exchange_s"] = t.exchange_s;
        d["linear_s"] = t.linear_s;
        d["moe_s"] = t.moe_s;
        d["allreduce_s"] = t.allreduce_s;
        d["other_s"] = t.other_s;
        d["steps"] = t.steps;
        return d;
      });
}

}  // namespace helix::bind
