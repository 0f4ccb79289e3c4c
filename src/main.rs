//! The `deprovd` binary: parse the command line, load the configuration, set up logging, and
//! hand over to the verb in `deprovd::cli`.

use clap::Parser;

fn main() {
    let cli = deprovd::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deprovd: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(deprovd::cli::run(cli));
    std::process::exit(code);
}
