//! The `fairgate` binary: parses the command line and hands over to [`fairgate::cli`].

/// jemalloc rather than glibc's malloc. With thousands of open streams the gateway's heap
/// grows by tens of KiB per stream (mostly hyper's connection buffers); glibc kept all of it
/// after the streams ended (320 MiB of 340 at 8,000 streams, only ~33 MiB of it in use),
/// jemalloc gives it back, and it costs less CPU per allocation on the request path.
/// mimalloc was tried too and held 50% more. Measured in BENCHMARKS.md ("Open streams").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    fairgate::cli::main()
}
