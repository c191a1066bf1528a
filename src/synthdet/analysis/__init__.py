"""What turns scores into findings: figures and table layout (report) and the shortcut audit."""
