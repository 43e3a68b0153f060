//! The colours every email and web page is drawn with, named once (Tailwind's scale, so a
//! shade's name says how light it is). Templates read them as `crate::render::palette::…`:
//! email clients ignore CSS variables, so each value is written into the markup.

/// The brand colour: links, buttons, the masthead.
pub const TEAL_700: &str = "#0f766e";
/// The brand colour on a dark background.
pub const TEAL_300: &str = "#5eead4";
/// Form errors.
pub const RED_700: &str = "#b91c1c";
pub const WHITE: &str = "#ffffff";
pub const GRAY_50: &str = "#f9fafb";
pub const GRAY_100: &str = "#f3f4f6";
pub const GRAY_200: &str = "#e5e7eb";
pub const GRAY_300: &str = "#d1d5db";
pub const GRAY_400: &str = "#9ca3af";
pub const GRAY_500: &str = "#6b7280";
pub const GRAY_600: &str = "#4b5563";
pub const GRAY_700: &str = "#374151";
pub const GRAY_800: &str = "#1f2937";
pub const GRAY_900: &str = "#111827";
