//! The `fairgate` binary: parses the command line and hands over to [`fairgate::cli`].

fn main() -> std::process::ExitCode {
    fairgate::cli::main()
}
