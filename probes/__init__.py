"""partprobe: what does a pretrained vision encoder know about whole objects, and what about their parts?"""

__version__ = "0.1.0"
