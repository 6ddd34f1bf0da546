// cuBLAS GEMMs of the SIMT emulator, written from the cuBLAS documentation (cublasGemmEx,
// cublasGemmStridedBatchedEx), not from cuda/linear.cu:
//   C = alpha * op(A) op(B) + beta * C, column-major; op(A) is m x k, op(B) k x n, C m x n.
//   A is stored lda x k with lda >= max(1, m) when transa == N, lda x m with lda >= max(1, k) otherwise;
//   B is stored ldb x n with ldb >= max(1, k) when transb == N, ldb x k with ldb >= max(1, n) otherwise;
//   ldc >= max(1, m); m, n, k, batchCount >= 0; otherwise CUBLAS_STATUS_INVALID_VALUE.
//   Supported (computeType CUBLAS_COMPUTE_32F): A/B CUDA_R_16BF with C CUDA_R_16BF or CUDA_R_32F, and
//   A/B/C CUDA_R_32F; other combinations are CUBLAS_STATUS_NOT_SUPPORTED. alpha and beta are host fp32
//   (the default pointer mode); with beta == 0, C is not read (it may hold NaN).
// Every operand range must lie in device memory, else CUBLAS_STATUS_EXECUTION_FAILED (a GPU would fault).
// The product accumulates in fp32 over k; a bf16 C is rounded to nearest even once.
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "internal.hpp"

struct cublasContext {
  cudaStream_t stream = nullptr;
};

namespace {

float load(const void* base, cudaDataType_t t, int64_t i) {
  if (t == CUDA_R_32F) return static_cast<const float*>(base)[i];
  const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void store(void* base, cudaDataType_t t, int64_t i, float v) {
  if (t == CUDA_R_32F) {
    static_cast<float*>(base)[i] = v;
    return;
  }
  uint32_t u;
  std::memcpy(&u, &v, 4);
  uint16_t r = (u & 0x7fffffffu) > 0x7f800000u ? static_cast<uint16_t>((u >> 16) | 0x40u)
                                               : static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  static_cast<uint16_t*>(base)[i] = r;
}

size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

// Bytes spanned by a column-major rows x cols matrix with leading dimension ld.
size_t extent(int64_t rows, int64_t cols, int64_t ld, cudaDataType_t t) {
  if (rows == 0 || cols == 0) return 0;
  return static_cast<size_t>((cols - 1) * ld + rows) * type_bytes(t);
}

cublasStatus_t fail(cublasStatus_t status, const std::string& message) {
  simt::detail::set_error(cudaErrorUnknown, message);
  std::fprintf(stderr, "[simt] %s\n", message.c_str());
  return status;
}

cublasStatus_t gemm(cublasHandle_t h, const char* fn, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                    int k, const void* alpha, const void* A, cudaDataType_t Atype, int lda, long long strideA,
                    const void* B, cudaDataType_t Btype, int ldb, long long strideB, const void* beta, void* C,
                    cudaDataType_t Ctype, int ldc, long long strideC, int batch, cublasComputeType_t compute) {
  std::lock_guard lock(simt::detail::api_mutex());
  if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const std::string f = fn;
  if (transa != CUBLAS_OP_N && transa != CUBLAS_OP_T && transa != CUBLAS_OP_C)
    return fail(CUBLAS_STATUS_INVALID_VALUE, f + ": invalid transa");
  if (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T && transb != CUBLAS_OP_C)
    return fail(CUBLAS_STATUS_INVALID_VALUE, f + ": invalid transb");
  if (m < 0 || n < 0 || k < 0 || batch < 0)
    return fail(CUBLAS_STATUS_INVALID_VALUE, f + ": negative m, n, k or batchCount");
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;  // real types: C == T
  const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
  const int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
  if (lda < std::max<int64_t>(1, a_rows)) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                f + ": lda=" + std::to_string(lda) + " < max(1, " + std::to_string(a_rows) + ")");
  }
  if (ldb < std::max<int64_t>(1, b_rows)) {
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                f + ": ldb=" + std::to_string(ldb) + " < max(1, " + std::to_string(b_rows) + ")");
  }
  if (ldc < std::max(1, m))
    return fail(CUBLAS_STATUS_INVALID_VALUE,
                f + ": ldc=" + std::to_string(ldc) + " < max(1, m=" + std::to_string(m) + ")");
  if (compute != CUBLAS_COMPUTE_32F)
    return fail(CUBLAS_STATUS_NOT_SUPPORTED, f + ": only CUBLAS_COMPUTE_32F is emulated");
  const bool bf16_in = Atype == CUDA_R_16BF && Btype == CUDA_R_16BF && (Ctype == CUDA_R_16BF || Ctype == CUDA_R_32F);
  const bool f32 = Atype == CUDA_R_32F && Btype == CUDA_R_32F && Ctype == CUDA_R_32F;
  if (!bf16_in && !f32) return fail(CUBLAS_STATUS_NOT_SUPPORTED, f + ": unsupported Atype/Btype/Ctype combination");
  if (alpha == nullptr || beta == nullptr) return fail(CUBLAS_STATUS_INVALID_VALUE, f + ": null alpha or beta");
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  // Every batch's operand must be device memory.
  const size_t ea = extent(a_rows, a_cols, lda, Atype), eb = extent(b_rows, b_cols, ldb, Btype),
               ec = extent(m, n, ldc, Ctype);
  for (int i = 0; i < batch; ++i) {
    const auto* a = static_cast<const char*>(A) + i * strideA * static_cast<long long>(type_bytes(Atype));
    const auto* b = static_cast<const char*>(B) + i * strideB * static_cast<long long>(type_bytes(Btype));
    const auto* c = static_cast<const char*>(C) + i * strideC * static_cast<long long>(type_bytes(Ctype));
    if (k > 0 && !simt::is_device_range(a, ea))
      return fail(CUBLAS_STATUS_EXECUTION_FAILED,
                  f + ": A of batch " + std::to_string(i) + " is not inside device memory");
    if (k > 0 && !simt::is_device_range(b, eb))
      return fail(CUBLAS_STATUS_EXECUTION_FAILED,
                  f + ": B of batch " + std::to_string(i) + " is not inside device memory");
    if (!simt::is_device_range(c, ec))
      return fail(CUBLAS_STATUS_EXECUTION_FAILED,
                  f + ": C of batch " + std::to_string(i) + " is not inside device memory");
  }
  const cudaError_t e = simt::detail::enqueue(h->stream, [=]() {
    for (int i = 0; i < batch; ++i) {
      const void* a = static_cast<const char*>(A) + i * strideA * static_cast<long long>(type_bytes(Atype));
      const void* b = static_cast<const char*>(B) + i * strideB * static_cast<long long>(type_bytes(Btype));
      void* c = static_cast<char*>(C) + i * strideC * static_cast<long long>(type_bytes(Ctype));
      for (int64_t col = 0; col < n; ++col) {
        for (int64_t row = 0; row < m; ++row) {
          float acc = 0.f;
          for (int64_t p = 0; p < k; ++p) {
            // op(A)[row, p] and op(B)[p, col] in column-major storage.
            const float av = load(a, Atype, ta ? row * lda + p : p * lda + row);
            const float bv = load(b, Btype, tb ? p * ldb + col : col * ldb + p);
            acc = fmaf(av, bv, acc);
          }
          const int64_t ci = col * ldc + row;
          const float out = be == 0.f ? al * acc : al * acc + be * load(c, Ctype, ci);
          store(c, Ctype, ci, out);
        }
      }
    }
    return cudaSuccess;
  });
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  std::lock_guard lock(simt::detail::api_mutex());
  if (!simt::detail::valid_stream(stream)) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasSetStream: invalid stream");
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "the functionality requested is not supported";
    default:
      return "cuBLAS error";
  }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType_t Atype, int lda, const void* B,
                            cudaDataType_t Btype, int ldb, const void* beta, void* C, cudaDataType_t Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t) {
  return gemm(handle, "cublasGemmEx", transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta, C,
              Ctype, ldc, 0, 1, computeType);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType_t Atype,
                                          int lda, long long int strideA, const void* B, cudaDataType_t Btype, int ldb,
                                          long long int strideB, const void* beta, void* C, cudaDataType_t Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t) {
  return gemm(handle, "cublasGemmStridedBatchedEx", transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype,
              ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount, computeType);
}
