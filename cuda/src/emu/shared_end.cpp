// Linked after the kernels' objects: the end of their thread-local storage (see shared_begin.cpp).
namespace emu {
thread_local char shared_tls_end;
char* shared_tls_end_address() { return &shared_tls_end; }
}  // namespace emu
