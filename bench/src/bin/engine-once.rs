//! Runs one path of the engine bench natively a fixed number of times, for a profiler:
//! `valgrind --tool=callgrind <target>/bench/engine-once miss 65536 20` (instruction counts are
//! repeatable where timings are not). Arguments: `miss|hit`, body size, iterations.

use bench_guest::{body, hit_answer, Session};

fn main() {
    bench::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map_or("miss", String::as_str);
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(65536);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let data = body(size);
    let answer = hit_answer(&data);
    let mut s = Session::new();
    let mut total = 0usize;
    for _ in 0..n {
        let inject = s.request(std::hint::black_box(&data));
        total += inject.len();
        total += match path {
            "hit" => s.answer(200, &answer).len(),
            _ => {
                s.answer(404, &[]);
                s.response(&data).len()
            }
        };
    }
    println!("{path} {size} x{n}: {total} bytes out");
}
