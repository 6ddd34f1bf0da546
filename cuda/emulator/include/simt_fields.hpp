// The pointers a kernel receives, found by type: every pointer argument, and every pointer field of a
// struct argument (a params struct, found with structured bindings), so the launch can check that each
// one is null or device memory (kernel_args.cpp). Nothing is listed by hand: a new field
// or a new params struct is checked as soon as it exists, and a struct argument the emulator cannot take
// apart (not an aggregate, more than 32 fields, a C array member) fails to compile here.
#pragma once

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <vector>

namespace simt::detail {

// Converts to any field type: used only in unevaluated requires-expressions (never defined).
struct AnyField {
  template <class T>
  operator T() const;
};

// The number of fields of aggregate T: the most initializers T{...} accepts.
template <class T, class... A>
consteval size_t field_count() {
  if constexpr (sizeof...(A) <= 64 && requires { T{A{}..., AnyField{}}; }) {
    return field_count<T, A..., AnyField>();
  } else {
    return sizeof...(A);
  }
}

// clang-format off
#define SIMT_FIELDS_1 a0
#define SIMT_FIELDS_2 SIMT_FIELDS_1, a1
#define SIMT_FIELDS_3 SIMT_FIELDS_2, a2
#define SIMT_FIELDS_4 SIMT_FIELDS_3, a3
#define SIMT_FIELDS_5 SIMT_FIELDS_4, a4
#define SIMT_FIELDS_6 SIMT_FIELDS_5, a5
#define SIMT_FIELDS_7 SIMT_FIELDS_6, a6
#define SIMT_FIELDS_8 SIMT_FIELDS_7, a7
#define SIMT_FIELDS_9 SIMT_FIELDS_8, a8
#define SIMT_FIELDS_10 SIMT_FIELDS_9, a9
#define SIMT_FIELDS_11 SIMT_FIELDS_10, a10
#define SIMT_FIELDS_12 SIMT_FIELDS_11, a11
#define SIMT_FIELDS_13 SIMT_FIELDS_12, a12
#define SIMT_FIELDS_14 SIMT_FIELDS_13, a13
#define SIMT_FIELDS_15 SIMT_FIELDS_14, a14
#define SIMT_FIELDS_16 SIMT_FIELDS_15, a15
#define SIMT_FIELDS_17 SIMT_FIELDS_16, a16
#define SIMT_FIELDS_18 SIMT_FIELDS_17, a17
#define SIMT_FIELDS_19 SIMT_FIELDS_18, a18
#define SIMT_FIELDS_20 SIMT_FIELDS_19, a19
#define SIMT_FIELDS_21 SIMT_FIELDS_20, a20
#define SIMT_FIELDS_22 SIMT_FIELDS_21, a21
#define SIMT_FIELDS_23 SIMT_FIELDS_22, a22
#define SIMT_FIELDS_24 SIMT_FIELDS_23, a23
#define SIMT_FIELDS_25 SIMT_FIELDS_24, a24
#define SIMT_FIELDS_26 SIMT_FIELDS_25, a25
#define SIMT_FIELDS_27 SIMT_FIELDS_26, a26
#define SIMT_FIELDS_28 SIMT_FIELDS_27, a27
#define SIMT_FIELDS_29 SIMT_FIELDS_28, a28
#define SIMT_FIELDS_30 SIMT_FIELDS_29, a29
#define SIMT_FIELDS_31 SIMT_FIELDS_30, a30
#define SIMT_FIELDS_32 SIMT_FIELDS_31, a31
#define SIMT_TIE_FIELDS(n)             \
  if constexpr (count == n) {          \
    const auto& [SIMT_FIELDS_##n] = s; \
    return std::tie(SIMT_FIELDS_##n);  \
  } else
// clang-format on

// The fields of s as a tuple of const references, in declaration order.
template <class T>
auto tie_fields(const T& s) {
  constexpr size_t count = field_count<T>();
  static_assert(std::is_aggregate_v<T> && count <= 32,
                "a kernel parameter struct must be an aggregate of at most 32 fields without C arrays "
                "(simt_fields.hpp takes it apart to check its pointers)");
  // clang-format off
  SIMT_TIE_FIELDS(1) SIMT_TIE_FIELDS(2) SIMT_TIE_FIELDS(3) SIMT_TIE_FIELDS(4) SIMT_TIE_FIELDS(5)
  SIMT_TIE_FIELDS(6) SIMT_TIE_FIELDS(7) SIMT_TIE_FIELDS(8) SIMT_TIE_FIELDS(9) SIMT_TIE_FIELDS(10)
  SIMT_TIE_FIELDS(11) SIMT_TIE_FIELDS(12) SIMT_TIE_FIELDS(13) SIMT_TIE_FIELDS(14) SIMT_TIE_FIELDS(15)
  SIMT_TIE_FIELDS(16) SIMT_TIE_FIELDS(17) SIMT_TIE_FIELDS(18) SIMT_TIE_FIELDS(19) SIMT_TIE_FIELDS(20)
  SIMT_TIE_FIELDS(21) SIMT_TIE_FIELDS(22) SIMT_TIE_FIELDS(23) SIMT_TIE_FIELDS(24) SIMT_TIE_FIELDS(25)
  SIMT_TIE_FIELDS(26) SIMT_TIE_FIELDS(27) SIMT_TIE_FIELDS(28) SIMT_TIE_FIELDS(29) SIMT_TIE_FIELDS(30)
  SIMT_TIE_FIELDS(31) SIMT_TIE_FIELDS(32) return std::tuple<>{};
  // clang-format on
}
#undef SIMT_TIE_FIELDS

// A pointer a kernel receives: parameter `param`, itself (field -1) or field `field` of its struct.
struct KernelPointer {
  int param;
  int field;
  const void* value;
};
struct KernelArgs {
  std::vector<int> field_counts;  // per parameter: fields of its struct, -1 when it is not a struct
  std::vector<KernelPointer> pointers;
};

// Adds the pointers in v (a parameter, or field `field` of one; a nested struct counts as its field).
template <class T>
void collect_pointers(const T& v, int param, int field, KernelArgs& out) {
  if constexpr (std::is_pointer_v<T>) {
    out.pointers.push_back({param, field, reinterpret_cast<const void*>(v)});
  } else if constexpr (std::is_class_v<T>) {
    std::apply([&](const auto&... f) { (collect_pointers(f, param, field, out), ...); }, tie_fields(v));
  } else {
    static_assert(std::is_arithmetic_v<T> || std::is_enum_v<T>, "a kernel parameter the emulator cannot check");
  }
}

// One kernel parameter: a struct's pointer fields, or the parameter itself.
template <class P>
void add_kernel_param(const P& p, int param, KernelArgs& args) {
  if constexpr (std::is_class_v<P>) {
    int field = 0;
    std::apply([&](const auto&... f) { (collect_pointers(f, param, field++, args), ...); }, tie_fields(p));
    args.field_counts.push_back(field);
  } else {
    args.field_counts.push_back(-1);
    collect_pointers(p, param, -1, args);
  }
}

template <class... P>
KernelArgs kernel_args(const std::tuple<P...>& params) {
  KernelArgs args;
  int param = 0;
  std::apply([&](const auto&... p) { (add_kernel_param(p, param++, args), ...); }, params);
  return args;
}

}  // namespace simt::detail
