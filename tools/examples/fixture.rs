//! Builds the CLI tests' fixture database in a directory, for trying `sluice` by hand:
//! `cargo run -p sluice-tools --example fixture -- /tmp/fixture`.

#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: fixture DIR");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(&dir);
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        eprintln!("{} exists and is not empty", dir.display());
        std::process::exit(2);
    }
    common::build_fixture(dir);
    println!("built {}", dir.display());
}
