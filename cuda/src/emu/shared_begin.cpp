// Linked before the kernels' objects: the first byte of their thread-local storage, where the emulator
// keeps static __shared__ variables (see runtime.cpp, poison_static_shared).
namespace emu {
thread_local char shared_tls_begin;
char* shared_tls_begin_address() { return &shared_tls_begin; }
}  // namespace emu
