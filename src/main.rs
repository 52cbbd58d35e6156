//! The `bursar` binary: everything lives in the library.

fn main() {
    std::process::exit(bursar::cli::main());
}
