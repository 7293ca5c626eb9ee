// library_types.h of the CUDA emulator: the data type enum of the CUDA libraries (values as CUDA's).
#pragma once
enum cudaDataType_t {
  CUDA_R_32F = 0,
  CUDA_R_64F = 1,
  CUDA_R_16F = 2,
  CUDA_R_16BF = 14,
};
typedef cudaDataType_t cudaDataType;
