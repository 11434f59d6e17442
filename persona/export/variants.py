"""`--variant` of export, animate and view: which of the avatar's two render variants to show
(the names of persona.avatar.posing.VARIANTS, the default first). No imports: the viewer and the
CLI share it without loading each other."""

VARIANTS = ("refined", "base")
VARIANT_HELP = ("refined (default): static offsets plus the pose deformer's offsets; base: the "
                "static offsets only (the avatar without pose-dependent deformation)")
