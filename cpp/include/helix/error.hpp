// Errors of the runtime. Library code never exits or aborts: it throws one of these, and the
// bindings turn each into a Python exception (helix.HelixError, helix.ArgumentError, helix.KVCacheFullError,
// helix.DeviceMemoryError).
#pragma once

#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <string>

namespace helix {

// Any failure of the runtime (communication, CUDA, internal state).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad argument: wrong shape, dtype, rank, contiguity or value. The message names the argument.
class ArgumentError : public Error {
 public:
  using Error::Error;
};

// The paged KV pool has no free block left for the request. The cache is unchanged.
class KVCacheFullError : public Error {
 public:
  using Error::Error;
};

// A device (GPU) allocation failed for lack of memory. The message says how much was asked for, how much
// the device has free, and (from the engine) what the memory was for.
class DeviceMemoryError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// A size for a message: "512 B", "3.0 KiB", "12.5 MiB", "1.50 GiB".
inline std::string human_bytes(double bytes) {
  char buf[32];
  if (bytes < 1024) {
    std::snprintf(buf, sizeof buf, "%.0f B", bytes);
  } else if (bytes < 1024.0 * 1024) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", bytes / 1024);
  } else if (bytes < 1024.0 * 1024 * 1024) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1024.0 * 1024));
  } else {
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
  }
  return buf;
}
}  // namespace detail

}  // namespace helix

// HELIX_CHECK(cond, "x must be ...", value): throws helix::Error with the concatenated message.
#define HELIX_CHECK(cond, ...)                                               \
  do {                                                                       \
    if (!(cond)) throw ::helix::Error(::helix::detail::concat(__VA_ARGS__)); \
  } while (0)

// HELIX_CHECK_ARG(cond, ...): the same for bad arguments (helix::ArgumentError / Python ValueError).
#define HELIX_CHECK_ARG(cond, ...)                                                   \
  do {                                                                               \
    if (!(cond)) throw ::helix::ArgumentError(::helix::detail::concat(__VA_ARGS__)); \
  } while (0)
