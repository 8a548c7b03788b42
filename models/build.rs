#[path = "link_mlx.rs"]
mod link_mlx;

fn main() {
    link_mlx::link_mlx_runtime();
}
