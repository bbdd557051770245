//! `quorrent-chaos`: runs the fault-injection test (see the crate docs).

fn main() {
    println!("{}", chaos::mono_ns());
}
