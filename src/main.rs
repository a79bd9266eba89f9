fn main() {
    std::process::exit(sessiond::cli::main());
}
