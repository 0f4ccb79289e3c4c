fn main() { eprintln!("deprovd: being assembled"); }
