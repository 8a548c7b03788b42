//! The config's closed sets of values: each a serde enum declared once,
//! spelled the same in TOML, `POSED_*` variables and flags.

use serde::{Deserialize, Serialize};

/// Declares a closed set of config values: a serde enum whose TOML, env and
/// flag spellings are its variants' names, and their display.
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice!(
    /// Whether to compile the networks into MLX graphs.
    Compile {
        /// On a GPU (Metal, CUDA); a CPU would compile with the system's C++
        /// compiler at run time.
        Auto = "auto",
        On = "on",
        Off = "off",
    }
);

impl Compile {
    pub fn enabled(self, on_gpu: bool) -> bool {
        match self {
            Compile::Auto => on_gpu,
            Compile::On => true,
            Compile::Off => false,
        }
    }
}

choice!(
    /// The published WiLoR weight files.
    HandVariant { F32 = "f32", Int4 = "int4" }
);

choice!(
    /// The float type a network computes in.
    FloatType { Float32 = "float32", Bfloat16 = "bfloat16" }
);

impl FloatType {
    pub fn dtype(self) -> mlx_rs::Dtype {
        match self {
            FloatType::Float32 => mlx_rs::Dtype::Float32,
            FloatType::Bfloat16 => mlx_rs::Dtype::Bfloat16,
        }
    }
}

choice!(
    /// The published Sapiens2 pose sizes.
    BodySize { B04 = "0.4b", B08 = "0.8b", B1 = "1b", B5 = "5b" }
);

choice!(
    /// How CorridorKey sees a frame of another size than its input.
    MatteFit {
        /// Stretch every frame to img_size² and back.
        Resize = "resize",
        /// Native resolution in img_size² tiles.
        Tiles = "tiles",
    }
);

choice!(
    /// The matte's hint when the client sends none and there is no
    /// previous alpha.
    FallbackHint {
        /// All foreground.
        Ones = "ones",
        /// A soft green-screen key of the frame.
        Chroma = "chroma",
    }
);

choice!(
    /// How events carry images.
    ImageEncoding { Png = "png", Raw = "raw" }
);

choice!(
    /// How fast replay feeds its frames.
    ReplayPace {
        /// Recorded timestamps, else `fps`.
        Original = "original",
        /// Each frame runs to completion before the next.
        Fast = "fast",
    }
);

choice!(
    /// Log line format.
    LogFormat { Text = "text", Json = "json" }
);
