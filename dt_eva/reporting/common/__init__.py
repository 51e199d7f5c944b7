"""What the run report and the study report share (and nothing else): report folders (`folder`), tables
and Markdown (`tables`), mean ± s.e. and the Wilson interval (`stats`), figures (`figures`, `heatmap`),
and the paper's numbers (`paper`). Neither report imports the other."""
