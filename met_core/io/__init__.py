"""Files: the formats MET writes and the bounded readers of files others hand it (checkpoint folders, traces,
images, JSON), and where things live on this machine. NumPy side: nothing here imports torch (docs/architecture.md).
"""
