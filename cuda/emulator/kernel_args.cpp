// The launch-time check of a kernel's pointers (simt_fields.hpp finds them): each must be null or point
// into a live device allocation (one past its end is allowed: an empty range). A host pointer works when
// the emulator dereferences it (device memory is host memory here) and faults on a GPU, so the launch
// fails instead, naming the kernel, the parameter and the field.
#include <cstdio>
#include <string>
#include <vector>

#include "internal.hpp"

namespace simt::detail {

namespace {

struct ParamNames {
  std::string name;
  std::vector<std::string> fields;  // empty: not a struct, or its fields are unknown
};

// "p{a,b},chunk" -> {p: [a, b]}, {chunk: []} (the format translate.py writes).
std::vector<ParamNames> parse_arg_names(const std::string& s) {
  std::vector<ParamNames> out;
  std::string word;
  bool in_fields = false;
  auto flush = [&] {
    if (in_fields) {
      out.back().fields.push_back(word);
    } else if (!word.empty()) {
      out.push_back({word, {}});
    }
    word.clear();
  };
  for (char c : s) {
    if (c == '{') {
      flush();
      in_fields = true;
    } else if (c == '}') {
      flush();
      in_fields = false;
    } else if (c == ',') {
      flush();
    } else if (c != ' ') {
      word += c;
    }
  }
  flush();
  return out;
}

bool points_into_device(const void* p) {
  return p == nullptr || is_device_range(p, 1) || is_device_range(static_cast<const char*>(p) - 1, 1);
}

// Names unknown to translate.py (e.g. a struct given as a template parameter) read as positions.
std::string param_label(const std::vector<ParamNames>& names, int param, int field) {
  std::string s = param < static_cast<int>(names.size()) ? names[param].name : "#" + std::to_string(param);
  if (field < 0) return s;
  const auto& fields = param < static_cast<int>(names.size()) ? names[param].fields : std::vector<std::string>{};
  return s + "." + (field < static_cast<int>(fields.size()) ? fields[field] : "field #" + std::to_string(field));
}

// translate.py's names must describe the parameters' types, or the messages would blame the wrong field.
std::string names_mismatch(const std::vector<ParamNames>& names, const KernelArgs& args) {
  if (names.empty()) return "";
  if (names.size() != args.field_counts.size()) {
    return std::to_string(names.size()) + " parameter names for " + std::to_string(args.field_counts.size()) +
           " parameters";
  }
  for (size_t i = 0; i < names.size(); ++i) {
    const size_t listed = names[i].fields.size();
    if (listed > 0 && static_cast<int>(listed) != args.field_counts[i]) {
      return "parameter " + names[i].name + " has " + std::to_string(args.field_counts[i]) + " fields, " +
             std::to_string(listed) + " names";
    }
  }
  return "";
}

}  // namespace

bool check_kernel_args(const LaunchConfig& config, const KernelArgs& args) {
  std::lock_guard lock(api_mutex());
  const auto names = parse_arg_names(config.arg_names == nullptr ? "" : config.arg_names);
  if (const std::string bad = names_mismatch(names, args); !bad.empty()) {
    set_error(cudaErrorInvalidValue, kernel_label(config) + ": translate.py's argument names '" + config.arg_names +
                                         "' do not match the kernel's parameter types (" + bad +
                                         "): its struct parser misread a definition");
    return false;
  }
  for (const KernelPointer& p : args.pointers) {
    if (points_into_device(p.value)) continue;
    char addr[32];
    std::snprintf(addr, sizeof addr, "%p", p.value);
    set_error(cudaErrorIllegalAddress,
              kernel_label(config) + ": parameter " + param_label(names, p.param, p.field) + " = " + addr +
                  " is not device memory (inside no live cudaMalloc allocation: a host pointer, or freed device "
                  "memory); a GPU faults when the kernel dereferences it");
    return false;
  }
  return true;
}

}  // namespace simt::detail
