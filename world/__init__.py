"""The mini-Emu world: a procedural text-to-image world small enough to pre-train and quality-tune on a CPU.

Pure code (numpy, Pillow, SciPy, torch, diffusers, open_clip): it never imports Django, and no Needle app imports
it. ``scenes`` draws and renders captioned scenes; ``appeal`` is the hidden visual-appeal function; ``oracle`` the
faithfulness oracle; ``models`` builds and trains the world's VAE, CLIP and base pipeline.
"""
