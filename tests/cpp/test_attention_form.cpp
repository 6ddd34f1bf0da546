// The choice between helix_attention's absorbed and expanded forms (helix_attention_expanded.hpp): the cost
// model's pair count, and the choices at DeepSeek-V3's attention shapes (the results of both forms are
// checked against the float64 reference in tests/mpi/test_helix_attention.py).
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "helix/comm.hpp"
#include "helix/error.hpp"
#include "helix/helix_attention_expanded.hpp"

using namespace helix;

namespace {

// One call's shape: B sequences of S keys each on this rank (rows in order, blocks of 64, positions
// 0..S-1), and `per_seq` query tokens per sequence at the last positions (a chunk ending the sequence).
struct Call {
  std::vector<int32_t> block_tables;
  std::vector<int64_t> kv_pos, num_slots, q_pos, q_seq;
  float dummy = 0.f;  // q_expanded, w_uk, w_uv: the choice reads no values
  HelixAttentionParams p;

  Call(int64_t B, int64_t S, int64_t per_seq, bool wuv) {
    const int64_t tpb = 64, blocks = (S + tpb - 1) / tpb;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t k = 0; k < blocks; ++k) block_tables.push_back(static_cast<int32_t>(b * blocks + k));
      for (int64_t k = 0; k < blocks * tpb; ++k) kv_pos.push_back(k);
      num_slots.push_back(S);
      for (int64_t t = S - per_seq; t < S; ++t) q_pos.push_back(t), q_seq.push_back(b);
    }
    p.q_pos = q_pos.data();
    p.q_seq = q_seq.data();
    p.block_tables = block_tables.data();
    p.kv_pos = kv_pos.data();
    p.num_slots = num_slots.data();
    p.q_expanded = &dummy;
    p.w_uk = &dummy;
    p.w_uv = wuv ? &dummy : nullptr;
    p.T = B * per_seq, p.B = B, p.max_blocks = blocks, p.tokens_per_block = tpb, p.max_num_slots = S;
    p.H = 128, p.R = 512, p.D = 512 + 64, p.Dn = 128, p.W = wuv ? 128 : 512;
  }
};

TEST(AttentionForm, CostCountsTheVisiblePairs) {
  Call c(1, 5, 3, false);  // queries at positions 2, 3, 4 over keys 0..4: 3 + 4 + 5 pairs
  const AttentionFormCost cost = attention_form_cost(c.p);
  EXPECT_DOUBLE_EQ(cost.absorbed, 2. * 128 * (2 * 512 + 64) * 12);
  EXPECT_DOUBLE_EQ(cost.expanded, 2. * 2 * 128 * (128 + 64 + 512) * 12 + 2. * 5 * 128 * 512 * 128);  // W = R: 2x
  Call projected(1, 5, 3, true);  // W = Dv: the kernel on [k_nope | k_pe | v], and W_UV of the absorbed form
  const AttentionFormCost with_wuv = attention_form_cost(projected.p);
  EXPECT_DOUBLE_EQ(with_wuv.absorbed, 2. * 128 * (2 * 512 + 64) * 12 + 2. * 3 * 128 * 512 * 128);
  EXPECT_DOUBLE_EQ(with_wuv.expanded, 2. * 128 * (128 + 128 + 64) * 12 + 2. * 5 * 128 * 512 * 256);
}

TEST(AttentionForm, DecodeNeverTakesTheExpandedForm) {
  for (const bool wuv : {false, true}) {
    for (const int64_t S : {1, 63, 64, 4096, 131072}) {
      EXPECT_EQ(choose_attention_form(Call(1, S, 1, wuv).p), AttentionForm::Absorbed) << S;
    }
    EXPECT_EQ(choose_attention_form(Call(8, 2048, 1, wuv).p), AttentionForm::Absorbed);  // a decode batch
  }
}

TEST(AttentionForm, LongPrefillChunksTakeTheExpandedFormWithWuvBeforeTheExchange) {
  EXPECT_EQ(choose_attention_form(Call(1, 4096, 512, true).p), AttentionForm::Expanded);
  EXPECT_EQ(choose_attention_form(Call(1, 512, 512, true).p), AttentionForm::Expanded);  // ~256 pairs per key
  EXPECT_EQ(choose_attention_form(Call(1, 4096, 64, true).p), AttentionForm::Absorbed);  // ~64 pairs per key
  // The latent exchange (W = R) keeps R-wide values: the expanded form's GEMMs do not pay at these shapes.
  EXPECT_EQ(choose_attention_form(Call(1, 4096, 512, false).p), AttentionForm::Absorbed);
}

TEST(AttentionForm, ForcingAndMissingInputs) {
  Call decode(1, 100, 1, false), chunk(1, 4096, 512, false);
  set_attention_form(AttentionForm::Expanded);
  EXPECT_EQ(choose_attention_form(decode.p), AttentionForm::Expanded);
  set_attention_form(AttentionForm::Absorbed);
  EXPECT_EQ(choose_attention_form(chunk.p), AttentionForm::Absorbed);
  set_attention_form(AttentionForm::Auto);
  chunk.p.w_uk = nullptr;  // a call without the expanded inputs (the CUDA backend's) stays absorbed
  EXPECT_EQ(choose_attention_form(chunk.p), AttentionForm::Absorbed);
  EXPECT_EQ(parse_attention_form("expanded", "form"), AttentionForm::Expanded);
  EXPECT_THROW(parse_attention_form("latent", "form"), ArgumentError);
}

// The decoder skips the absorb when the call runs the expanded form (Backend::expanded_attention); a call
// that runs the absorbed form without q is refused before anything is appended.
TEST(AttentionForm, TheAbsorbedFormNeedsTheAbsorbedQueries) {
  Call chunk(1, 4096, 512, true);
  ASSERT_EQ(choose_attention_form(chunk.p), AttentionForm::Expanded);  // q is never read
  const auto self = make_self_communicator();
  set_attention_form(AttentionForm::Absorbed);
  try {
    helix_attention_cpu(chunk.p, *self, nullptr);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the absorbed form needs the absorbed queries q"), std::string::npos);
  }
  set_attention_form(AttentionForm::Auto);
}

}  // namespace
