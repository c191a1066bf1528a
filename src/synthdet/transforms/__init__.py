"""Image transforms shared by the papers: GenImage's Task 2 degradations (JPEG, blur, down-scaling)
and the debiased training protocol's JPEG/size equalisation. Builds on :mod:`synthdet.data`."""
